#!/usr/bin/env bash
# Print the path of a CPython X.Y interpreter for the template's tests and `make lock`, installing
# it first where this machine has none and this script knows a source for it.
#
#   scripts/python.sh 3.14          # the path; installs Python 3.14 when missing
#   scripts/python.sh --find 3.12   # the path, or exit status 1 when there is none
#
# Looked for, in order: pythonX.Y on PATH, pyenv's versions, and this script's own installs
# under ~/.cache/cookiecutter-fastapi-lifespan/ (XDG_CACHE_HOME is honoured).
#
# Installing: the only sources reachable where this template is tested are the package index and
# Debian's archive; python.org, GitHub (uv's and pyenv's downloads) and Debian's source packages of
# testing are not. So a version Debian stable lacks comes from the Debian suite that packages it
# (DEBIAN_SUITES below): debootstrap makes a minimal root of that suite with its python3.X package
# (apt checks every package against the archive's signed Release file, with the host's
# debian-archive-keyring), and patchelf points the interpreter at that root's own C library, which
# is newer than the host's. Nothing is installed system-wide and nothing runs inside a chroot: the
# interpreter runs on the host, finding its standard library beside itself, so `uv venv --python`
# takes it like any other. It needs root (debootstrap), debootstrap and patchelf.
set -euo pipefail

# Suites that package a CPython the host does not have. A suite name, not a package version:
# testing's pool keeps only its current version, so a pinned version would vanish within weeks.
declare -A DEBIAN_SUITES=([3.14]=forky)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cookiecutter-fastapi-lifespan"

usage() {
    echo "usage: $0 [--find] X.Y" >&2
    exit 2
}

works() { [[ -x $1 ]] && "$1" -c 'import ssl, sqlite3, zlib' >/dev/null 2>&1; }

find_python() {
    local version=$1 candidate
    candidate=$(command -v "python$version" || true)
    if [[ -n $candidate ]] && works "$candidate"; then
        # The interpreter itself, not a shim in front of it (pyenv's): venvs link to this path.
        "$candidate" -c 'import sys; print(sys.executable)'
        return
    fi
    # pyenv's builds of this minor version, newest patch release first.
    for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version".* 2>/dev/null | sort -V -r); do
        if [[ $candidate =~ /$version\.[0-9]+$ ]] && works "$candidate/bin/python$version"; then
            echo "$candidate/bin/python$version"
            return
        fi
    done
    candidate="$CACHE/python$version/usr/bin/python$version"
    if works "$candidate"; then
        echo "$candidate"
        return
    fi
    return 1
}

install_python() {
    local version=$1 suite=${DEBIAN_SUITES[$1]:-}
    if [[ -z $suite ]]; then
        echo "no Python $version on this machine, and $0 knows no source for it: install it (e.g. pyenv install $version)" >&2
        return 1
    fi
    if ((EUID != 0)); then
        echo "Python $version is installed from Debian $suite with debootstrap, which needs root: run $0 $version as root" >&2
        return 1
    fi
    local program
    for program in debootstrap patchelf; do
        command -v "$program" >/dev/null || { echo "installing Python $version needs $program (apt-get install $program)" >&2; return 1; }
    done
    local mirror root="$CACHE/python$version" partial="$CACHE/python$version.partial" started=$SECONDS
    mirror=$(debian_mirror)
    echo "installing Python $version from Debian $suite ($mirror) into $root" >&2
    rm -rf "$partial"
    # The sid script serves testing too; bookworm's debootstrap has none named after newer suites.
    debootstrap --variant=minbase --include="python$version" "$suite" "$partial" "$mirror" \
        /usr/share/debootstrap/scripts/sid >"$CACHE/python$version.log" 2>&1 || {
        tail -n 20 "$CACHE/python$version.log" >&2
        return 1
    }
    rm -rf "$partial"/var/cache/apt/archives/*.deb "$partial"/var/lib/apt/lists/* "$partial"/usr/share/{doc,locale,man}
    # The interpreter loads the suite's C library (the host's is older), and every library it or
    # an extension module needs from the root first: DT_RPATH, unlike RUNPATH, applies to those too.
    patchelf --set-interpreter "$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
        --force-rpath --set-rpath '$ORIGIN/../lib/x86_64-linux-gnu' \
        "$partial/usr/bin/python$version"
    rm -rf "$root"
    mv "$partial" "$root"
    works "$root/usr/bin/python$version" || { echo "the installed Python $version does not run" >&2; return 1; }
    echo "installed $("$root/usr/bin/python$version" -VV | head -n 1) in $((SECONDS - started)) s" >&2
}

# The mirror apt uses for Debian (one-line or deb822 sources).
debian_mirror() {
    local uri
    uri=$(grep -h -E '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list.d/*.list 2>/dev/null | grep -o -m 1 -E 'https?://[^ ]*/debian/?' | head -n 1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

find_only=false
if [[ ${1:-} == --find ]]; then
    find_only=true
    shift
fi
[[ $# -eq 1 && $1 =~ ^3\.[0-9]+$ ]] || usage
version=$1

if find_python "$version"; then
    exit 0
fi
if $find_only; then
    exit 1
fi
mkdir -p "$CACHE"
# One install at a time: a second caller waits, then finds the first one's.
exec 9>"$CACHE/python$version.lock"
flock 9
find_python "$version" || { install_python "$version" && find_python "$version"; }
