/*
 * verify_thread: runs the daemon's DNS verification thread
 * (verify_thread_start) alone, from a sendgate config file, until SIGTERM
 * or SIGINT. test_verify.py builds it against the build's libraries when the daemon
 * it tests does not run the thread itself.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>

#include "tenants/tenants.h"

int main(int argc, char **argv)
{
	struct config cfg;
	char err[512];
	sigset_t set;
	int sig;

	if (argc != 2) {
		fprintf(stderr, "usage: verify_thread CONFIG\n");
		return 2;
	}
	log_init("verify_thread", 0, SGLOG_DEBUG);
	if (config_load(&cfg, argv[1], err, sizeof(err)) == -1) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	/* The thread inherits the mask: only this one takes the signals. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (verify_thread_start(&cfg) == -1)
		return 1;
	sigwait(&set, &sig);
	verify_thread_stop();
	config_free(&cfg);
	return 0;
}
