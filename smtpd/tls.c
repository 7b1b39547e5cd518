/*
 * tls: the server's TLS context (TLS 1.2 minimum, no compression or
 * renegotiation), and the STARTTLS steps both listeners share.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "smtpd/server.h"

static void tls_error(char *err, size_t errlen, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char reason[256] = "unknown error";

	if (e)
		ERR_error_string_n(e, reason, sizeof(reason));
	ERR_clear_error();
	snprintf(err, errlen, "%s %s: %s", what, file, reason);
}

SSL_CTX *tls_server_ctx(const char *cert, const char *key, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (ctx == NULL) {
		tls_error(err, errlen, "cannot create TLS context", "");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
				     SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
	/* Idle connections keep no 34 KB of record buffers each. A write that
	 * blocked may be repeated from where the bytes now are (session.c
	 * writes replies itself, the bufferevent repeats a blocked one;
	 * libevent sets this mode too, it is stated here for our own use). */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* One read() for whatever records arrived, instead of two (header,
	 * then body) per record; session.c (tls_pull) takes the records
	 * OpenSSL then holds that libevent would not ask for. */
	SSL_CTX_set_read_ahead(ctx, 1);
	/* Sessions are never resumed (no cache, no tickets): do not send the
	 * two TLS 1.3 tickets OpenSSL otherwise writes after each handshake. */
	SSL_CTX_set_num_tickets(ctx, 0);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		tls_error(err, errlen, "cannot load certificate", cert);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		tls_error(err, errlen, "cannot load private key", key);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		tls_error(err, errlen, "private key does not match certificate", cert);
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

void tls_describe(SSL *ssl, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
}

void tls_log_error(const char *client, const char *op, unsigned long err, int ssl_error)
{
	int sys_errno = errno;
	char reason[160], q[200];

	if (err == 0)
		err = ERR_peek_last_error();
	if (err != 0)
		ERR_error_string_n(err, reason, sizeof(reason));
	else if (ssl_error == SSL_ERROR_SYSCALL)
		snprintf(reason, sizeof(reason), "%s",
			 sys_errno ? strerror(sys_errno) : "unexpected end of stream");
	else
		snprintf(reason, sizeof(reason), "no reason given");
	log_info("event=tls_error client=%s op=%s ssl_error=%d error=%s", client, op, ssl_error,
		 log_quote(q, sizeof(q), reason));
}

void tls_log_event_error(struct bufferevent *bev, short what, int handshaking, const char *client)
{
	unsigned long e = bufferevent_get_openssl_error(bev);

	/* libevent reports a failed handshake as a read error. */
	if (e)
		tls_log_error(client,
			      handshaking		 ? "handshake"
			      : what & BEV_EVENT_WRITING ? "write"
							 : "read",
			      e, 0);
}

const char *tls_starttls_refusal(int tls_active, size_t arglen)
{
	if (tls_active)
		return "503 5.5.1 TLS is already active";
	if (arglen)
		return "501 5.5.4 STARTTLS takes no argument";
	return NULL;
}

int tls_starttls_injected(struct bufferevent *bev, const char *client)
{
	size_t n = evbuffer_get_length(bufferevent_get_input(bev));

	if (n == 0)
		return 0;
	/* Bytes sent before the handshake would be taken as encrypted
	 * commands by a careless server: STARTTLS command injection. */
	log_warn("event=starttls_injection client=%s bytes=%zu", client, n);
	return 1;
}

int tls_upgrade(struct server *srv, evutil_socket_t fd, struct bufferevent **bev)
{
	/* The context as it is now: a SIGHUP reload replaces srv->tls, and
	 * the SSL keeps a reference to the one it came from. */
	SSL *ssl = SSL_new(srv->tls);

	if (ssl == NULL)
		return -1;
	if (*bev)
		bufferevent_free(*bev);
	*bev = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
					      BEV_OPT_CLOSE_ON_FREE);
	if (*bev == NULL) {
		SSL_free(ssl);
		return -1;
	}
	return 0;
}
