#!/usr/bin/env bash
# What apt's sources say, for tests/setup-host.sh: the Debian mirror that
# serves bookworm (to add bookworm-backports from), and whether
# bookworm-backports is configured already. Reads both source formats:
#   classic   ETC/sources.list, ETC/sources.list.d/*.list
#             ("deb [opts] URI SUITE COMPONENT...")
#   deb822    ETC/sources.list.d/*.sources
#             (stanzas of "Types:", "URIs:" (one or more), "Suites:", "Enabled:")
# like apt itself: other files in sources.list.d/ are ignored, comments and
# disabled stanzas too. Security entries (a "-security" suite, or a URI with
# "security" in it) are never the mirror.
#
# ETC is the apt configuration directory, /etc/apt unless given, so that
# tests can point it at fixtures (tests/tests/setup_host.rs).
#
#   bash tests/apt-sources.sh mirror [ETC]         print the mirror URI; exit 1 (and say why) if none
#   bash tests/apt-sources.sh has-backports [ETC]  exit 0 if bookworm-backports is configured, else 1
#
# Sourced, it defines apt_mirror and apt_has_backports (same arguments).

# Every source entry as lines "mirror URI" (a Debian archive URI of a
# non-security entry) and "backports" (an entry with suite bookworm-backports).
apt_sources_scan() {
    local etc=${1:-/etc/apt}
    local classic=() deb822=() f
    [ -f "$etc/sources.list" ] && classic+=("$etc/sources.list")
    for f in "$etc"/sources.list.d/*.list; do [ -f "$f" ] && classic+=("$f"); done
    for f in "$etc"/sources.list.d/*.sources; do [ -f "$f" ] && deb822+=("$f"); done
    if [ ${#classic[@]} -gt 0 ]; then
        awk '
            function is_mirror(u) { return u ~ /^https?:\/\/[^ ]*\/debian\/?$/ && u !~ /security/ }
            /^[ \t]*#/ { next }
            $1 == "deb" || $1 == "deb-src" {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                uri = $i; suite = $(i + 1)
                if (suite == "bookworm-backports") print "backports"
                if (suite !~ /-security$/ && is_mirror(uri)) print "mirror " uri
            }' "${classic[@]}"
    fi
    if [ ${#deb822[@]} -gt 0 ]; then
        awk '
            function is_mirror(u) { return u ~ /^https?:\/\/[^ ]*\/debian\/?$/ && u !~ /security/ }
            function reset() { uris = ""; suites = ""; types = ""; enabled = "yes"; field = "" }
            function flush(   n, s, u, i, security) {
                if (uris != "" && tolower(enabled) != "no" && types ~ /(^|[ \t])deb(-src)?([ \t]|$)/) {
                    security = 1
                    n = split(suites, s, /[ \t]+/)
                    for (i = 1; i <= n; i++) {
                        if (s[i] == "") continue
                        if (s[i] == "bookworm-backports") print "backports"
                        if (s[i] !~ /-security$/) security = 0
                    }
                    n = split(uris, u, /[ \t]+/)
                    for (i = 1; i <= n; i++)
                        if (!security && is_mirror(u[i])) print "mirror " u[i]
                }
                reset()
            }
            BEGIN { reset() }
            FNR == 1 && NR > 1 { flush() }
            /^#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ {
                # A continuation line of the field above.
                if (field == "uris") uris = uris " " $0
                else if (field == "suites") suites = suites " " $0
                else if (field == "types") types = types " " $0
                next
            }
            {
                c = index($0, ":")
                field = tolower(substr($0, 1, c - 1))
                val = substr($0, c + 1)
                if (field == "uris") uris = val
                else if (field == "suites") suites = val
                else if (field == "types") types = val
                else if (field == "enabled") { gsub(/[ \t]/, "", val); enabled = val }
            }
            END { flush() }' "${deb822[@]}"
    fi
}

# Print the first Debian mirror of the apt sources under ETC (no trailing
# slash). None: say which files were read, return 1.
apt_mirror() {
    local etc=${1:-/etc/apt} m
    m=$(apt_sources_scan "$etc" | awk '$1 == "mirror" { print $2; exit }')
    if [ -z "$m" ]; then
        echo "no Debian mirror (an http(s) URI ending in /debian, not a security entry) in" \
            "$etc/sources.list, $etc/sources.list.d/*.list or $etc/sources.list.d/*.sources" >&2
        return 1
    fi
    echo "${m%/}"
}

# Whether bookworm-backports is configured under ETC.
apt_has_backports() {
    apt_sources_scan "${1:-/etc/apt}" | grep -qx backports
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
        mirror) apt_mirror "${2:-/etc/apt}" ;;
        has-backports) apt_has_backports "${2:-/etc/apt}" ;;
        *)
            echo "usage: $0 mirror|has-backports [ETC_APT_DIR]" >&2
            exit 2
            ;;
    esac
fi
