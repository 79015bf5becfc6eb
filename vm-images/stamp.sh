# Shared by vm-images/build.sh and vm-images/k73/build.sh (sourced): the
# cache stamp of an image.

# sha256 lines of the files given and of every tool of TOOLS ("path:dest"
# pairs) with the libraries ldd lists for it: what goes into the image.
hash_image_files() { # TOOLS FILE...
	local t tools=$1 files=()
	shift
	files+=("$@")
	for t in $tools; do
		files+=("${t%%:*}")
		files+=($(ldd "${t%%:*}" 2>/dev/null | grep -o '/[^ ]*'))
	done
	sha256sum -- $(printf '%s\n' "${files[@]}" | sort -u) 2>/dev/null || true
}

# Exit the calling script with "up to date" when OUT holds a built image
# whose stamp is HASH (and FORCE is not 1); otherwise drop the stale stamp.
exit_if_up_to_date() { # OUT HASH
	if [ "${FORCE:-0}" = 0 ] && [ -f "$1/stamp" ] && [ "$(cat "$1/stamp")" = "$2" ] &&
		[ -s "$1/vmlinuz" ] && [ -s "$1/initramfs.cpio.gz" ]; then
		log "up to date ($1, $(sed -n 's/^kernel-release //p' "$1/manifest.txt" 2>/dev/null))"
		exit 0
	fi
	rm -f "$1/stamp"
}
