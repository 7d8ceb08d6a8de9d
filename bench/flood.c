/* Opens (and closes) one file for writing at RATE opens per second for SECONDS (0: as fast as
 * it can, for 500,000 opens per second asked), and prints how many opens that was and the
 * seconds they took. Used by bench/agent.sh for the event-rate ceiling: a loop in C adds next to
 * nothing per event, so the rate is the agent's, not the loop's. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PATH SECONDS RATE\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    double seconds = atof(argv[2]);
    double rate = atof(argv[3]);
    long count = (long)((rate > 0 ? rate : 500000) * seconds);
    double start = now();
    for (long i = 0; i < count; i++) {
        int fd = open(path, O_WRONLY | O_CREAT, 0644);
        if (fd < 0) {
            perror(path);
            return 1;
        }
        close(fd);
        /* Pace in steps of 100 opens: sleep until the schedule catches up. */
        if (rate > 0 && i % 100 == 99) {
            double due = start + (i + 1) / rate, late = due - now();
            if (late > 0) {
                struct timespec t = {(time_t)late, (long)((late - (time_t)late) * 1e9)};
                nanosleep(&t, NULL);
            }
        }
    }
    printf("%ld %.6f\n", count, now() - start);
    return 0;
}
