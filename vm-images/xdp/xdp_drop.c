// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// XDP program for the vhost-tap test guest: drop every frame, and count it.
//
// Load:   /sbin/ip link set dev eth0 xdp obj /usr/lib/vt-xdp/xdp_drop.o sec xdp
// Read:   bpftool -j map dump name vt_drop_stats   (key 0: packets, key 1: bytes)
// Unload: /sbin/ip link set dev eth0 xdp off
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Index 0: frames, index 1: bytes. A plain ARRAY (not per-CPU) so that
 * `bpftool map dump` prints the totals directly; atomic adds keep it exact
 * with several RX queues on several vCPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} vt_drop_stats SEC(".maps");

SEC("xdp")
int vt_xdp_drop(struct xdp_md *ctx)
{
	__u32 k_pkts = 0, k_bytes = 1;
	__u64 len = ctx->data_end - ctx->data;
	__u64 *v;

	v = bpf_map_lookup_elem(&vt_drop_stats, &k_pkts);
	if (v)
		__sync_fetch_and_add(v, 1);
	v = bpf_map_lookup_elem(&vt_drop_stats, &k_bytes);
	if (v)
		__sync_fetch_and_add(v, len);
	return XDP_DROP;
}
