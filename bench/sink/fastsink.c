/*
 * fastsink: a minimal SMTP sink for the delivery benchmark (the Python sink
 * of the tests is too slow to measure thousands of messages a second).
 * One epoll thread; answers EHLO (with PIPELINING), MAIL, RCPT, DATA, RSET,
 * NOOP, QUIT; counts messages and prints "COUNT n unixtime" each second it
 * changed. Built by bench/run_delivery.py; not part of sendgate.
 *
 *   fastsink PORT    (0: any; prints "PORT n" first)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define BUFSZ (1 << 20)

struct client {
	int fd;
	int data; /* inside DATA */
	size_t len;
	char buf[BUFSZ];
	char out[8192];
	size_t outlen;
};

static unsigned long long count;

static void reply(struct client *c, const char *s)
{
	size_t n = strlen(s);

	if (c->outlen + n > sizeof(c->out))
		return;
	memcpy(c->out + c->outlen, s, n);
	c->outlen += n;
}

/* Handles what is buffered; 0 to keep the connection, -1 to close it. */
static int process(struct client *c)
{
	size_t off = 0;
	int quit = 0;

	while (off < c->len) {
		char *p = c->buf + off, *e;
		size_t left = c->len - off;

		if (c->data) {
			/* The message ends at CRLF . CRLF (or "." CRLF first thing). */
			if (left >= 3 && memcmp(p, ".\r\n", 3) == 0) {
				e = p;
			} else {
				e = memmem(p, left, "\r\n.\r\n", 5);
				if (e == NULL)
					break;
				e += 2;
			}
			off = (size_t)(e - c->buf) + 3;
			c->data = 0;
			count++;
			reply(c, "250 2.0.0 ok\r\n");
			continue;
		}
		e = memchr(p, '\n', left);
		if (e == NULL)
			break;
		off = (size_t)(e - c->buf) + 1;
		if (strncasecmp(p, "EHLO", 4) == 0)
			reply(c, "250-fastsink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE\r\n");
		else if (strncasecmp(p, "HELO", 4) == 0)
			reply(c, "250 fastsink\r\n");
		else if (strncasecmp(p, "MAIL", 4) == 0)
			reply(c, "250 2.1.0 ok\r\n");
		else if (strncasecmp(p, "RCPT", 4) == 0)
			reply(c, "250 2.1.5 ok\r\n");
		else if (strncasecmp(p, "DATA", 4) == 0) {
			reply(c, "354 go ahead\r\n");
			c->data = 1;
		} else if (strncasecmp(p, "QUIT", 4) == 0) {
			reply(c, "221 bye\r\n");
			quit = 1;
			break;
		} else
			reply(c, "250 ok\r\n");
	}
	memmove(c->buf, c->buf + off, c->len - off);
	c->len -= off;
	if (c->outlen > 0) {
		ssize_t w = write(c->fd, c->out, c->outlen);
		(void)w; /* replies are small: the socket buffer takes them */
		c->outlen = 0;
	}
	if (c->len == BUFSZ)
		return -1;
	return quit ? -1 : 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	struct epoll_event ev, evs[64];
	unsigned long long last = 0;
	time_t last_print = 0;
	int ls, ep, one = 1;

	ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(argc > 1 ? (uint16_t)strtol(argv[1], NULL, 10) : 0);
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	if (bind(ls, (struct sockaddr *)&sin, sizeof(sin)) == -1 || listen(ls, 1024) == -1) {
		perror("bind");
		return 1;
	}
	getsockname(ls, (struct sockaddr *)&sin, &sl);
	printf("PORT %d\n", ntohs(sin.sin_port));
	fflush(stdout);
	ep = epoll_create1(0);
	ev.events = EPOLLIN;
	ev.data.ptr = NULL;
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	for (;;) {
		int n = epoll_wait(ep, evs, 64, 200), i;
		struct timeval tv;

		for (i = 0; i < n; i++) {
			struct client *c = evs[i].data.ptr;
			if (c == NULL) {
				int fd;
				while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) != -1) {
					c = calloc(1, sizeof(*c));
					if (c == NULL)
						abort();
					c->fd = fd;
					setsockopt(fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one,
						   sizeof(one));
					reply(c, "220 fastsink ESMTP\r\n");
					process(c);
					ev.events = EPOLLIN;
					ev.data.ptr = c;
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
				}
				continue;
			}
			for (;;) {
				size_t room = BUFSZ - c->len;
				ssize_t r = read(c->fd, c->buf + c->len, room);
				if (r > 0) {
					c->len += (size_t)r;
					if (process(c) == -1) {
						r = 0;
					} else if ((size_t)r < room) {
						/* Drained (epoll is level-triggered:
						 * more data wakes us again); no read
						 * just to see EAGAIN. */
						break;
					} else {
						continue;
					}
				}
				if (r == 0 || (r == -1 && errno != EAGAIN && errno != EINTR)) {
					close(c->fd);
					free(c);
				}
				break;
			}
		}
		gettimeofday(&tv, NULL);
		if (tv.tv_sec != last_print) {
			last_print = tv.tv_sec;
			if (count != last) {
				last = count;
				printf("COUNT %llu %ld.%06ld\n", count, (long)tv.tv_sec,
				       (long)tv.tv_usec);
				fflush(stdout);
			}
		}
	}
}
