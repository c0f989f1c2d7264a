# Shared shell helpers for the project's scripts (sourced, not run).

# apt_install LIST...: install the packages named in the given list files, if missing.
apt_install() {
  local wanted missing=()
  wanted=$(grep -hv '^\s*#' "$@" | awk 'NF{print $1}' | sort -u)
  for pkg in $wanted; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# venv_ready: a venv on Debian's own python3 that sees Debian's python3-* packages
# (so tests run against the library versions the .deb depends on).
venv_ready() {
  if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
}
