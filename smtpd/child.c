/*
 * child: the delivery process. When [delivery] enabled, the daemon runs
 * delivery as a second process of the same binary ("sendgate
 * --delivery-only"), sharing only the spool: a stalled delivery never
 * slows acceptance, and the delivery side holds no private key. A child
 * that dies is started again with backoff; SIGTERM is passed on.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "smtpd/server.h"

#define RESTART_MAX 30 /* seconds between restarts at most */

static void child_spawn(struct server *srv)
{
	pid_t parent = getpid();
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	pid_t pid;

	/* The real path, so that ps shows "sendgate", not "exe". */
	if (n <= 0 || (size_t)n >= sizeof(self) - 1)
		snprintf(self, sizeof(self), "%s", "/proc/self/exe");
	else
		self[n] = '\0';
	pid = fork();

	if (pid == -1) {
		log_err("event=delivery_spawn_failed error=\"%s\"", strerror(errno));
		/* Tried again by the restart timer. */
		srv->child_backoff = srv->child_backoff ? srv->child_backoff : 1;
		{
			struct timeval tv = {srv->child_backoff, 0};
			evtimer_add(srv->ev_child_restart, &tv);
		}
		return;
	}
	if (pid == 0) {
		/* The child must neither outlive the daemon (it would keep the
		 * spool busy) nor hold its sockets: keep only stdio. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(1);
		closefrom(3);
		/* The VERP tag key, derived from the DKIM master key, which
		 * the child could not read any more (privileges are dropped)
		 * and must not hold. */
		{
			char hex[65];
			hex_encode(srv->cfg->verp_key, sizeof(srv->cfg->verp_key), hex);
			setenv(VERP_KEY_ENV, hex, 1);
			explicit_bzero(hex, sizeof(hex));
		}
		execl(self, "sendgate", "--delivery-only", "-c", srv->cfg->path,
		      (char *)NULL);
		_exit(127);
	}
	srv->child_pid = pid;
	srv->child_started = time(NULL);
	log_info("event=delivery_started pid=%d", (int)pid);
}

static void restart_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	if (!srv->stopping && srv->child_pid == 0)
		child_spawn(srv);
}

static void on_sigchld(evutil_socket_t sig, short what, void *arg)
{
	struct server *srv = arg;
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid != srv->child_pid)
			continue;
		srv->child_pid = 0;
		if (WIFEXITED(status))
			log_info("event=delivery_exited pid=%d status=%d", (int)pid, WEXITSTATUS(status));
		else
			log_warn("event=delivery_exited pid=%d signal=%d", (int)pid,
				 WIFSIGNALED(status) ? WTERMSIG(status) : 0);
		if (srv->stopping) {
			if (srv->nsessions == 0)
				event_base_loopexit(srv->base, NULL);
			continue;
		}
		/* A child that lived a while restarts at once; one that keeps
		 * dying waits longer each time. */
		if (time(NULL) - srv->child_started > 60)
			srv->child_backoff = 1;
		else if (srv->child_backoff < RESTART_MAX)
			srv->child_backoff = srv->child_backoff ? srv->child_backoff * 2 : 1;
		if (srv->child_backoff > RESTART_MAX)
			srv->child_backoff = RESTART_MAX;
		{
			struct timeval tv = {srv->child_backoff, 0};
			evtimer_add(srv->ev_child_restart, &tv);
		}
	}
}

void child_start(struct server *srv)
{
	srv->ev_sigchld = evsignal_new(srv->base, SIGCHLD, on_sigchld, srv);
	event_add(srv->ev_sigchld, NULL);
	srv->ev_child_restart = evtimer_new(srv->base, restart_cb, srv);
	child_spawn(srv);
}

void child_signal(struct server *srv, int sig)
{
	if (srv->child_pid > 0)
		kill(srv->child_pid, sig);
}

int child_running(const struct server *srv)
{
	return srv->child_pid > 0;
}

void child_finish(struct server *srv, int timeout)
{
	int status, waited = 0;

	if (srv->child_pid > 0) {
		kill(srv->child_pid, SIGTERM);
		while (waitpid(srv->child_pid, &status, WNOHANG) == 0) {
			if (waited++ >= timeout * 10) {
				log_warn("event=delivery_killed pid=%d reason=stop_timeout",
					 (int)srv->child_pid);
				kill(srv->child_pid, SIGKILL);
				waitpid(srv->child_pid, &status, 0);
				break;
			}
			usleep(100000);
		}
		srv->child_pid = 0;
	}
	if (srv->ev_sigchld)
		event_free(srv->ev_sigchld);
	if (srv->ev_child_restart)
		event_free(srv->ev_child_restart);
	srv->ev_sigchld = srv->ev_child_restart = NULL;
}
