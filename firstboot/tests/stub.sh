#!/bin/bash
# A stand-in for a system command, installed under the command's name (symlink) on the tests' PATH.
# It appends "NAME ARGS..." to $STUB_LOG, keeps its last argv (NUL-separated) in $STUB_STATE/NAME.argv,
# fails with status 1 when "NAME ARGS..." starts with $STUB_FAIL, and imitates the few outputs the
# first-boot scripts read.
set -euo pipefail
name=${0##*/}
{
    printf '%s' "$name"
    printf ' %s' "$@"
    printf '\n'
} >>"$STUB_LOG"
printf '%s\0' "$@" >"$STUB_STATE/$name.argv"
if [[ -n ${STUB_FAIL:-} && "$name $*" == "$STUB_FAIL"* ]]; then
    echo "$name: failing as asked by STUB_FAIL" >&2
    exit 1
fi

# option_value OPTION ARGS...: the argument following OPTION.
option_value() {
    local option=$1
    shift
    while (($# > 1)); do
        if [[ $1 == "$option" ]]; then
            printf '%s' "$2"
            return 0
        fi
        shift
    done
    return 1
}

case $name in
curl)
    # Serve the URL's last path component from $STUB_DOWNLOADS; a missing file is a 404.
    url=${!#}
    source=$STUB_DOWNLOADS/${url##*/}
    [[ -f $source ]] || { echo "curl: (22) The requested URL returned error: 404" >&2; exit 22; }
    cp "$source" "$(option_value --output "$@")"
    ;;
unzip)
    # The nucleus zip is opaque test data: lay out what the real archive contains that we use.
    dir=$(option_value -d "$@")
    mkdir -p "$dir/lib"
    echo 'stand-in Greengrass.jar' >"$dir/lib/Greengrass.jar"
    ;;
jarsigner)
    printf '%s\n' "${STUB_JARSIGNER_OUTPUT:-jar verified.}"
    ;;
getent)
    # Known entries: space-separated DATABASE:NAME words in $STUB_GETENT_KNOWN.
    [[ " ${STUB_GETENT_KNOWN:-} " == *" $1:$2 "* ]] || exit 2
    ;;
dpkg)
    if [[ $1 == --print-architecture ]]; then echo arm64; fi
    ;;
dpkg-query)
    # dpkg-query -W -f=FORMAT PACKAGE...: "PACKAGE installed", or not-installed for $STUB_NOT_INSTALLED.
    shift 2
    for package in "$@"; do
        state=installed
        if [[ " ${STUB_NOT_INSTALLED:-} " == *" $package "* ]]; then state=not-installed; fi
        printf '%s %s\n' "$package" "$state"
    done
    ;;
java)
    # Keep the --init-config file as the installer saw it (first boot deletes it afterwards).
    cp "$(option_value --init-config "$@")" "$STUB_STATE/java-init-config.yaml"
    ;;
esac
