/* What ferrox binds from DPDK: the public headers, and C wrappers for the
 * functions and macros DPDK defines only inline (bindgen cannot bind them). */
#ifndef FERROX_DPDK_SHIM_H
#define FERROX_DPDK_SHIM_H

#include <stdint.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_dev.h>

int ferrox_errno(void);
unsigned ferrox_lcore_id(void);
uint16_t ferrox_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t ferrox_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *ferrox_pktmbuf_alloc(struct rte_mempool *pool);
int ferrox_pktmbuf_alloc_bulk(struct rte_mempool *pool, struct rte_mbuf **mbufs, unsigned n);
void ferrox_pktmbuf_free(struct rte_mbuf *m);
void ferrox_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned n);
/* First segment's data pointer and length. */
uint8_t *ferrox_pktmbuf_data(struct rte_mbuf *m);
uint16_t ferrox_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t ferrox_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t ferrox_pktmbuf_nb_segs(const struct rte_mbuf *m);
/* Appends len bytes to a single-segment mbuf; NULL when it has no room. */
uint8_t *ferrox_pktmbuf_append(struct rte_mbuf *m, uint16_t len);

/* Constants DPDK defines with function-like macros (RTE_BIT64). */
uint64_t ferrox_rss_hf_ip_tcp(void);
uint64_t ferrox_tx_offload_tcp_cksum(void);
uint64_t ferrox_rx_offload_tcp_cksum(void);
/* What the NIC found of a received frame's L4 checksum: 1 good (or the data
 * verified, the field left partial), -1 bad, 0 not checked. */
int ferrox_pktmbuf_rx_l4_cksum(const struct rte_mbuf *m);
/* Marks an Ethernet/IPv4/TCP frame (IPv4 header of l3_len bytes) for TCP
 * checksum offload and seeds the pseudo-header sum the NIC adds to. */
void ferrox_pktmbuf_tx_tcp_cksum(struct rte_mbuf *m, uint8_t l3_len);

#endif
