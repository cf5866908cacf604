#include "shim.h"

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
uint64_t ferrox_tx_offload_ipv4_tcp_cksum(void) {
    return RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_TCP_CKSUM;
}
