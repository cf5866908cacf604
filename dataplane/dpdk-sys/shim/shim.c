#include "shim.h"

#include <rte_ip.h>
#include <rte_tcp.h>

int ferrox_errno(void) { return rte_errno; }
unsigned ferrox_lcore_id(void) { return rte_lcore_id(); }

uint16_t ferrox_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t ferrox_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *ferrox_pktmbuf_alloc(struct rte_mempool *pool) { return rte_pktmbuf_alloc(pool); }

int ferrox_pktmbuf_alloc_bulk(struct rte_mempool *pool, struct rte_mbuf **mbufs, unsigned n) {
    return rte_pktmbuf_alloc_bulk(pool, mbufs, n);
}

void ferrox_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

void ferrox_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned n) { rte_pktmbuf_free_bulk(mbufs, n); }

uint8_t *ferrox_pktmbuf_data(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }
uint16_t ferrox_pktmbuf_data_len(const struct rte_mbuf *m) { return m->data_len; }
uint32_t ferrox_pktmbuf_pkt_len(const struct rte_mbuf *m) { return m->pkt_len; }
uint16_t ferrox_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

uint8_t *ferrox_pktmbuf_append(struct rte_mbuf *m, uint16_t len) {
    return (uint8_t *)rte_pktmbuf_append(m, len);
}

uint64_t ferrox_rss_hf_ip_tcp(void) { return RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP; }
uint64_t ferrox_tx_offload_tcp_cksum(void) { return RTE_ETH_TX_OFFLOAD_TCP_CKSUM; }
uint64_t ferrox_rx_offload_tcp_cksum(void) { return RTE_ETH_RX_OFFLOAD_TCP_CKSUM; }

int ferrox_pktmbuf_rx_l4_cksum(const struct rte_mbuf *m) {
    uint64_t state = m->ol_flags & RTE_MBUF_F_RX_L4_CKSUM_MASK;
    /* NONE: the field is not the checksum, but the data was verified. */
    if (state == RTE_MBUF_F_RX_L4_CKSUM_GOOD || state == RTE_MBUF_F_RX_L4_CKSUM_NONE)
        return 1;
    if (state == RTE_MBUF_F_RX_L4_CKSUM_BAD)
        return -1;
    return 0;
}

void ferrox_pktmbuf_tx_tcp_cksum(struct rte_mbuf *m, uint8_t l3_len) {
    m->l2_len = sizeof(struct rte_ether_hdr);
    m->l3_len = l3_len;
    m->ol_flags |= RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_TCP_CKSUM;
    struct rte_ipv4_hdr *ip = rte_pktmbuf_mtod_offset(m, struct rte_ipv4_hdr *, m->l2_len);
    struct rte_tcp_hdr *tcp =
        rte_pktmbuf_mtod_offset(m, struct rte_tcp_hdr *, m->l2_len + m->l3_len);
    /* The NIC sums the segment on top of the pseudo-header's sum. */
    tcp->cksum = rte_ipv4_phdr_cksum(ip, m->ol_flags);
}
