/* Paced MQTT publisher for bench/hub_ingest.py: pre-encoded payloads, patched in place.
 *
 * The template is one metrics message whose device id, seq and ts are placeholders of a
 * fixed width: device ids "bench-NNNNN" (topic and payload), seq right-aligned in spaces
 * (JSON allows them), ts "YYYY-MM-DDTHH:MM:SS.mmm000Z" = the publish time (for latency).
 * Messages go round-robin over the devices at a fixed total rate, for a fixed count.
 *
 *   loadgen HOST PORT QOS RATE COUNT DEVICES PREFIX TEMPLATE_FILE
 *
 * Prints one JSON line: sent, acked, first/last publish (epoch s), CPU s, max lag (s).
 */
#include <errno.h>
#include <mosquitto.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define DEVICE_MARK "bench-XXXXX"
#define SEQ_MARK "999999999999"
#define TS_MARK "2000-01-01T00:00:00.001000Z"

static long acked = 0; /* written by the network thread */

static void on_publish(struct mosquitto *m, void *obj, int mid) {
    (void)m; (void)obj; (void)mid;
    __atomic_add_fetch(&acked, 1, __ATOMIC_RELAXED);
}

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now_real(struct timespec *out) {
    clock_gettime(CLOCK_REALTIME, out);
    return out->tv_sec + out->tv_nsec / 1e9;
}

static char *find(char *hay, size_t len, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= len; i++)
        if (memcmp(hay + i, needle, n) == 0) return hay + i;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: loadgen HOST PORT QOS RATE COUNT DEVICES PREFIX TEMPLATE\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), qos = atoi(argv[3]);
    double rate = atof(argv[4]);
    long count = atol(argv[5]), devices = atol(argv[6]);
    const char *prefix = argv[7];
    FILE *f = fopen(argv[8], "rb");
    if (!f) { perror("template"); return 2; }
    static char payload[65536];
    size_t len = fread(payload, 1, sizeof payload, f);
    fclose(f);
    char *dev = find(payload, len, DEVICE_MARK);
    char *seq = find(payload, len, SEQ_MARK);
    char *tsp = find(payload, len, TS_MARK);
    if (!dev || !seq || !tsp) { fprintf(stderr, "template lacks a placeholder\n"); return 2; }
    char topic[256];

    mosquitto_lib_init();
    struct mosquitto *m = mosquitto_new("fleetpulse-bench-loadgen", true, NULL);
    if (!m) { perror("mosquitto_new"); return 1; }
    /* QoS 1 messages awaiting their PUBACK at once. Not 0 (no limit): libmosquitto 2.0.11
     * then spends O(inflight) per message (46 s of CPU for 100k messages at 20k/s). */
    mosquitto_max_inflight_messages_set(m, getenv("LOADGEN_INFLIGHT") ? (unsigned)atoi(getenv("LOADGEN_INFLIGHT")) : 1000);
    mosquitto_publish_callback_set(m, on_publish);
    if (mosquitto_connect(m, host, port, 60) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "cannot connect to %s:%d\n", host, port);
        return 1;
    }
    /* libmosquitto's network thread writes and reads PUBACKs; this one publishes what is
     * due every millisecond (bursts of rate/1000 messages). */
    mosquitto_loop_start(m);
    double start = now_mono(), max_lag = 0, first_pub = 0, last_pub = 0;
    long sent = 0, failed = 0;
    while (sent < count) {
        double elapsed = now_mono() - start;
        long due = (long)(elapsed * rate) + 1;
        if (due > count) due = count;
        if (due > sent) {
            double lag = elapsed - sent / rate;
            if (lag > max_lag) max_lag = lag;
            struct timespec rt;
            double real = now_real(&rt);
            struct tm tm;
            gmtime_r(&rt.tv_sec, &tm);
            char tsbuf[96];
            snprintf(tsbuf, sizeof tsbuf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ld000Z",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, rt.tv_nsec / 1000000);
            for (; sent < due; sent++) {
                long d = sent % devices, s = sent / devices + 1;
                char idbuf[32], seqbuf[32];
                snprintf(idbuf, sizeof idbuf, "bench-%05ld", d);
                snprintf(seqbuf, sizeof seqbuf, "%12ld", s);
                memcpy(dev, idbuf, 11);
                memcpy(seq, seqbuf, 12);
                memcpy(tsp, tsbuf, 27);
                snprintf(topic, sizeof topic, "%s/%s/metrics", prefix, idbuf);
                int rc = mosquitto_publish(m, NULL, topic, (int)len, payload, qos, false);
                if (rc != MOSQ_ERR_SUCCESS) failed++;
                if (sent == 0) first_pub = real;
                last_pub = real;
            }
        }
        usleep(1000);
    }
    /* Wait (bounded) for the broker to take everything: PUBACKs at QoS 1. */
    double deadline = now_mono() + 30;
    while (now_mono() < deadline && qos > 0 && __atomic_load_n(&acked, __ATOMIC_RELAXED) < sent)
        usleep(1000);
    if (qos == 0) usleep(300000); /* let the socket drain */
    mosquitto_disconnect(m);
    mosquitto_loop_stop(m, false);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    printf("{\"sent\": %ld, \"failed\": %ld, \"acked\": %ld, \"first_publish\": %.6f, "
           "\"last_publish\": %.6f, \"cpu_s\": %.3f, \"max_lag_s\": %.4f}\n",
           sent, failed, qos > 0 ? __atomic_load_n(&acked, __ATOMIC_RELAXED) : sent, first_pub, last_pub, cpu, max_lag);
    return failed ? 1 : 0;
}
