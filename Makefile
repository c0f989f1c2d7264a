.PHONY: vagrant-test
# Two Vagrant VMs offline (libvirt + QEMU), the e2e scenario and cross-node checks: vagrant/ci/.
vagrant-test:
	./vagrant/ci/run.sh
