/*
 * Prints twemproxy's twelve key hashes for each hex-encoded key read from
 * stdin, one line per key: the key, then the hashes in twemproxy's order
 * (one_at_a_time md5 crc16 crc32 crc32a fnv1_64 fnv1a_64 fnv1_32 fnv1a_32
 * hsieh murmur jenkins), as 8 hex digits. Linked against twemproxy's own
 * src/hashkit/*.c by hash_gen.sh. Each key is hashed at three alignments
 * and must hash the same at each (jenkins and murmur read whole words).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint32_t (*hash_t)(const char *key, size_t len);

/* twemproxy's hashes, in its order: declared and listed from this one list. */
#define HASHES(X)                                                            \
    X(one_at_a_time) X(md5) X(crc16) X(crc32) X(crc32a) X(fnv1_64)           \
    X(fnv1a_64) X(fnv1_32) X(fnv1a_32) X(hsieh) X(murmur) X(jenkins)

#define DECLARE(name) uint32_t hash_##name(const char *, size_t);
HASHES(DECLARE)

#define ENTRY(name) hash_##name,
static const hash_t hashes[] = {HASHES(ENTRY)};

static int nibble(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int main(void) {
    static char line[1 << 16];
    static _Alignas(16) char buf[(1 << 15) + 64];
    while (fgets(line, sizeof line, stdin) != NULL) {
        size_t n = strcspn(line, "\r\n");
        line[n] = '\0';
        if (n % 2 != 0 || n / 2 > (1 << 15)) {
            fprintf(stderr, "bad key line\n");
            return 1;
        }
        size_t len = n / 2;
        printf("%s", line);
        for (size_t h = 0; h < sizeof hashes / sizeof hashes[0]; h++) {
            uint32_t first = 0;
            for (size_t shift = 0; shift < 3; shift++) {
                char *key = buf + 16 + shift;
                memset(buf, 0x5a, sizeof buf);
                for (size_t i = 0; i < len; i++) {
                    int hi = nibble(line[2 * i]), lo = nibble(line[2 * i + 1]);
                    if (hi < 0 || lo < 0) {
                        fprintf(stderr, "bad hex\n");
                        return 1;
                    }
                    key[i] = (char)(hi << 4 | lo);
                }
                uint32_t value = hashes[h](key, len);
                if (shift == 0) {
                    first = value;
                } else if (value != first) {
                    fprintf(stderr, "hash %zu depends on alignment\n", h);
                    return 1;
                }
            }
            printf(" %08x", first);
        }
        printf("\n");
    }
    return 0;
}
