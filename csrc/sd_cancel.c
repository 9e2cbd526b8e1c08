#include "sd_cancel.h"

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int depth;
static volatile int *flags_[64];
static struct sigaction old_int, old_term;

static void chain(const struct sigaction *old, int sig, siginfo_t *info, void *uc)
{
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction)
            old->sa_sigaction(sig, info, uc);
    } else if (old->sa_handler != SIG_IGN && old->sa_handler != SIG_DFL && old->sa_handler) {
        old->sa_handler(sig);
    } else if (old->sa_handler == SIG_DFL) {
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

static void on_signal(int sig, siginfo_t *info, void *uc)
{
    for (int i = 0; i < 64; i++)
        if (flags_[i])
            *flags_[i] = 1;
    chain(sig == SIGINT ? &old_int : &old_term, sig, info, uc);
}

int sd_cancel_begin(volatile int *flag)
{
    int slot = -1;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < 64; i++)
        if (flags_[i] == NULL) {
            flags_[i] = flag;
            slot = i;
            break;
        }
    if (slot >= 0 && depth++ == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_signal;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
    }
    pthread_mutex_unlock(&lock);
    return slot;
}

void sd_cancel_end(int slot)
{
    if (slot < 0)
        return;
    pthread_mutex_lock(&lock);
    flags_[slot] = NULL;
    if (depth > 0 && --depth == 0) {
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    pthread_mutex_unlock(&lock);
}
