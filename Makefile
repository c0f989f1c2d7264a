# make packages: the .deb (debhelper/pybuild) and the .rpm (rpmbuild) into dist/.
# The version comes from k3s_agent/__init__.py only.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' k3s_agent/__init__.py)
NAME := k3s-hardening-agent
BUILD := build/packages
DIST := dist
# Reproducible dates: the last commit's time (falls back to now outside git).
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH
# Build with Debian's own tools and python3, whatever else is on PATH (pyenv, venvs).
export PATH := /usr/sbin:/usr/bin:/sbin:/bin
unexport VIRTUAL_ENV PYTHONPATH
# Files that make up a source tree (no tests, caches or VCS data).
SOURCES := pyproject.toml README.md k3s_agent systemd packaging docs

DEB := $(DIST)/$(NAME)_$(VERSION)_all.deb
RPM := $(DIST)/$(NAME)-$(VERSION)-1.el9.noarch.rpm

.PHONY: packages deb rpm lint-packages clean-packages version vagrant-test
packages: deb rpm

version:
	@echo $(VERSION)

deb: $(DEB)
rpm: $(RPM)

$(DEB): $(shell find $(SOURCES) -type f -not -name '*.pyc' 2>/dev/null)
	@test -n "$(VERSION)" || { echo "no __version__ in k3s_agent/__init__.py" >&2; exit 1; }
	rm -rf $(BUILD)/deb && mkdir -p $(BUILD)/deb/$(NAME)-$(VERSION) $(DIST)
	tar -c --exclude=__pycache__ --exclude='*.pyc' $(SOURCES) | tar -x -C $(BUILD)/deb/$(NAME)-$(VERSION)
	cp -r packaging/debian $(BUILD)/deb/$(NAME)-$(VERSION)/debian
	sed -e 's/@VERSION@/$(VERSION)/' -e "s/@DATE@/$$(date -R -u -d @$(SOURCE_DATE_EPOCH))/" \
		packaging/changelog.in > $(BUILD)/deb/$(NAME)-$(VERSION)/debian/changelog
	cd $(BUILD)/deb/$(NAME)-$(VERSION) && dpkg-buildpackage -us -uc -b -nc >../build.log 2>&1 \
		|| { tail -40 ../build.log >&2; exit 1; }
	cp $(BUILD)/deb/$(NAME)_$(VERSION)_all.deb $(DEB)
	@echo "built $(DEB)"

$(RPM): $(shell find $(SOURCES) -type f -not -name '*.pyc' 2>/dev/null)
	rm -rf $(BUILD)/rpm && mkdir -p $(BUILD)/rpm/SOURCES $(DIST)
	tar -cz --exclude=__pycache__ --exclude='*.pyc' --transform 's,^,$(NAME)-$(VERSION)/,' \
		-f $(BUILD)/rpm/SOURCES/$(NAME)-$(VERSION).tar.gz $(SOURCES)
	rpmbuild -bb packaging/rpm/$(NAME).spec --define "_topdir $(abspath $(BUILD)/rpm)" \
		--define "upstream_version $(VERSION)" --define "dist .el9" \
		--define "use_source_date_epoch_as_buildtime 1" --define "clamp_mtime_to_source_date_epoch 1" \
		>$(BUILD)/rpm/build.log 2>&1 || { tail -40 $(BUILD)/rpm/build.log >&2; exit 1; }
	cp $(BUILD)/rpm/RPMS/noarch/$(NAME)-$(VERSION)-1.el9.noarch.rpm $(RPM)
	@echo "built $(RPM)"

# lintian and rpmlint on what `packages` built (overrides are justified in
# packaging/debian/*.lintian-overrides and packaging/rpm/rpmlintrc).
lint-packages: packages
	lintian --fail-on error,warning --info $(BUILD)/deb/$(NAME)_$(VERSION)_*.changes
	rpmlint -r packaging/rpm/k3s-hardening-agent.rpmlintrc $(RPM)

clean-packages:
	rm -rf $(BUILD) $(DIST)

# Two Vagrant VMs offline (libvirt + QEMU emulation): the e2e scenario in each
# and the cross-node checks; host set-up, cached box and clean-up in vagrant/ci/.
vagrant-test:
	./vagrant/ci/run.sh
