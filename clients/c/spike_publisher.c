/*
 * A spike publisher in C, written from docs/protocol.md alone: the proof that the
 * wire protocol is language-neutral, and a start for a lab's acquisition code.
 *
 * It simulates `channels` cosine-tuned units driven by a 2-D velocity (vx, vy) and
 * publishes, every millisecond of its clock:
 *   - a `behavior` message with the velocity, named ["vx", "vy"]     (§3.3)
 *   - a `spikes.events` message with that millisecond's spikes        (§3.1)
 * each family with its own sequence counter (§4.1), a random epoch (§4.3), and at the
 * end one trailing watermark message (§5.3).
 *
 * Build (Debian: apt-get install libzmq3-dev libmsgpack-dev):
 *   cc -O2 -Wall -o spike_publisher clients/c/spike_publisher.c -lzmq -lmsgpackc -lm
 * Run:
 *   ./spike_publisher tcp://127.0.0.1:5555 96 60 rig1
 *   (endpoint to bind, channels, seconds of data, stream id; all optional)
 */
#include <errno.h>
#include <math.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define STEP_NS 1000000LL /* one message of each kind per millisecond */
#define MAX_SPIKES 4096

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t rng_next(void) { /* xorshift64*: enough for a simulation */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static double rng_uniform(void) { return (double)(rng_next() >> 11) / 9007199254740992.0; }

/* Payloads are little-endian whatever the host (§2.2): write them byte by byte. */
static void put_u16le(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put_u64le(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_f64le(unsigned char *p, double d) {
    uint64_t v;
    memcpy(&v, &d, sizeof v);
    put_u64le(p, v);
}

static void pack_str(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    msgpack_pack_str(pk, n); /* msgpack str, never bin (§2.2) */
    msgpack_pack_str_body(pk, s, n);
}

/* The header keys every message carries (§2.1); `extra` more map entries follow. */
static void pack_common(msgpack_packer *pk, int extra, const char *kind, const char *stream,
                        uint64_t seq, int64_t t_ns, uint64_t epoch) {
    msgpack_pack_map(pk, 6 + extra);
    pack_str(pk, "v");      msgpack_pack_int(pk, 1);
    pack_str(pk, "kind");   pack_str(pk, kind);
    pack_str(pk, "stream"); pack_str(pk, stream);
    pack_str(pk, "seq");    msgpack_pack_uint64(pk, seq);
    pack_str(pk, "t_ns");   msgpack_pack_int64(pk, t_ns);
    pack_str(pk, "ep");     msgpack_pack_uint64(pk, epoch);
}

static int send_frame(void *sock, const void *data, size_t len, int more) {
    if (zmq_send(sock, data, len, more ? ZMQ_SNDMORE : 0) < 0) {
        fprintf(stderr, "spike_publisher: zmq_send failed: %s\n", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

static int send_behavior(void *sock, msgpack_sbuffer *buf, const char *stream, uint64_t seq,
                         int64_t t_ns, uint64_t epoch, double vx, double vy) {
    msgpack_packer pk;
    unsigned char payload[16];
    msgpack_sbuffer_clear(buf);
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    pack_common(&pk, 3, "behavior", stream, seq, t_ns, epoch);
    pack_str(&pk, "ch");    msgpack_pack_int(&pk, 2);
    pack_str(&pk, "dtype"); pack_str(&pk, "<f8");
    pack_str(&pk, "x");     msgpack_pack_map(&pk, 1);
    pack_str(&pk, "names"); msgpack_pack_array(&pk, 2);
    pack_str(&pk, "vx");    pack_str(&pk, "vy");
    put_f64le(payload, vx);
    put_f64le(payload + 8, vy);
    if (send_frame(sock, "behavior", 8, 1) || send_frame(sock, buf->data, buf->size, 1))
        return -1;
    return send_frame(sock, payload, sizeof payload, 0);
}

static int send_events(void *sock, msgpack_sbuffer *buf, const char *stream, uint64_t seq,
                       int64_t t_ns, uint64_t epoch, int channels, int n,
                       const uint16_t *ids, const int64_t *times) {
    static unsigned char id_bytes[2 * MAX_SPIKES], time_bytes[8 * MAX_SPIKES];
    msgpack_packer pk;
    msgpack_sbuffer_clear(buf);
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    pack_common(&pk, 3, "spikes.events", stream, seq, t_ns, epoch);
    pack_str(&pk, "ch");    msgpack_pack_int(&pk, channels);
    pack_str(&pk, "dtype"); pack_str(&pk, "<u2");
    pack_str(&pk, "n");     msgpack_pack_int(&pk, n);
    for (int i = 0; i < n; i++) {
        put_u16le(id_bytes + 2 * i, ids[i]);
        put_u64le(time_bytes + 8 * i, (uint64_t)times[i]);
    }
    /* n may be 0: two empty payload frames, a watermark-only message (§5.3) */
    if (send_frame(sock, "spikes", 6, 1) || send_frame(sock, buf->data, buf->size, 1) ||
        send_frame(sock, id_bytes, 2 * (size_t)n, 1))
        return -1;
    return send_frame(sock, time_bytes, 8 * (size_t)n, 0);
}

static int64_t now_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    const char *endpoint = argc > 1 ? argv[1] : "tcp://127.0.0.1:5555";
    int channels = argc > 2 ? atoi(argv[2]) : 96;
    double seconds = argc > 3 ? atof(argv[3]) : 60.0;
    const char *stream = argc > 4 ? argv[4] : "rig1";
    if (channels < 1 || channels > 65536 || seconds <= 0) {
        fprintf(stderr, "usage: %s [ENDPOINT] [CHANNELS 1..65536] [SECONDS > 0] [STREAM]\n",
                argv[0]);
        return 2;
    }
    if (channels > 65535) {
        fprintf(stderr, "spike_publisher: this example sends <u2 ids: at most 65535 "
                        "channels (use <u4 ids beyond, protocol.md §2.3)\n");
        return 2;
    }
    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_PUB);
    int hwm = 100000, linger = 1000;
    zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(sock, endpoint) != 0) {
        fprintf(stderr, "spike_publisher: cannot bind %s: %s\n", endpoint,
                zmq_strerror(errno));
        return 1;
    }
    rng_state ^= (uint64_t)now_mono_ns() ^ ((uint64_t)getpid() << 32);
    uint64_t epoch = (rng_next() | 1) & 0x7fffffffULL; /* non-zero (§2.1) */

    /* Cosine tuning: unit i fires at base + gain * (vx cos(p_i) + vy sin(p_i)) Hz. */
    double *pref = malloc(sizeof(double) * (size_t)channels);
    for (int i = 0; i < channels; i++) pref[i] = 2.0 * M_PI * rng_uniform();
    uint16_t ids[MAX_SPIKES];
    int64_t times[MAX_SPIKES];
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);

    int64_t steps = (int64_t)(seconds * 1000.0);
    uint64_t spike_seq = 0, behavior_seq = 0;
    int64_t t0 = now_mono_ns();
    int rc = 0;
    for (int64_t k = 1; k <= steps && rc == 0; k++) {
        int64_t t_ns = k * STEP_NS; /* the acquisition clock, from 0 */
        double phase = 2.0 * M_PI * 0.25 * (double)t_ns / 1e9;
        double vx = 10.0 * cos(phase), vy = 10.0 * sin(1.7 * phase);
        int n = 0;
        for (int i = 0; i < channels && n < MAX_SPIKES; i++) {
            double rate = 20.0 + 3.0 * (vx * cos(pref[i]) + vy * sin(pref[i]));
            if (rate > 0 && rng_uniform() < rate * 1e-3) {
                ids[n] = (uint16_t)i;
                /* within the millisecond that ends at the watermark t_ns (§5.3) */
                times[n] = t_ns - STEP_NS + 1 + (int64_t)(rng_uniform() * (STEP_NS - 1));
                n++;
            }
        }
        /* behaviour first: the bin the spikes message completes finds it (§3.3) */
        rc = send_behavior(sock, &buf, stream, behavior_seq++, t_ns, epoch, vx, vy);
        if (rc == 0)
            rc = send_events(sock, &buf, stream, spike_seq++, t_ns, epoch, channels, n, ids,
                             times);
        int64_t due = t0 + k * STEP_NS, wait = due - now_mono_ns();
        if (wait > 0) {
            struct timespec ts = {wait / 1000000000LL, wait % 1000000000LL};
            nanosleep(&ts, NULL);
        }
    }
    if (rc == 0) /* trailing watermark: the last bins are decoded too (§5.3) */
        rc = send_events(sock, &buf, stream, spike_seq++, (steps + 1000) * STEP_NS, epoch,
                         channels, 0, ids, times);
    fprintf(stderr, "spike_publisher: %llu spikes messages, %llu behaviour messages on %s\n",
            (unsigned long long)spike_seq, (unsigned long long)behavior_seq, endpoint);
    msgpack_sbuffer_destroy(&buf);
    free(pref);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return rc == 0 ? 0 : 1;
}
