/*
 * test_queue_delivery: the pure parts of delivery: per-recipient status
 * segments after END (including torn appends), MX ordering and null MX,
 * VERP, the weighted pool choice, dot-stuffing, EHLO keywords.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/deliver_int.h"
#include "tenants/tenants.h"

/* A complete queue file image with three recipients. */
static void make_image(struct buf *img)
{
	static const char *rcpts[] = {"a@one.test", "b@one.test", "c@two.test"};
	const char hdr[] = "Subject: x\r\n\r\n";
	unsigned char d[32];
	size_t i;

	buf_init(img, 1 << 20);
	assert_int_equal(queue_magic_append(img), 0);
	assert_int_equal(queue_rec_append(img, QREC_BODY, "hello\r\n", 7), 0);
	assert_int_equal(queue_rec_append(img, QREC_HEADERS, hdr, strlen(hdr)), 0);
	assert_int_equal(queue_rec_append(img, QREC_ID, "0123456789ABCDEFGHIJ", 20), 0);
	assert_int_equal(queue_rec_append(img, QREC_TENANT, "7 acme", 6), 0);
	assert_int_equal(queue_rec_append(img, QREC_SENDER, "s@acme.test", 11), 0);
	for (i = 0; i < 3; i++)
		assert_int_equal(queue_rec_append(img, QREC_RCPT, rcpts[i], strlen(rcpts[i])), 0);
	assert_int_equal(queue_rec_append(img, QREC_RECEIVED, "1700000000", 10), 0);
	sha256(img->data, img->len, d);
	assert_int_equal(queue_rec_append(img, QREC_END, d, 32), 0);
}

static void test_status_roundtrip(void **state)
{
	struct queue_rcpt_status st[3], got[3];
	unsigned char digest[32], d2[32];
	struct queue_msg m;
	struct buf img;
	size_t valid, idx[2], base;
	char err[256];

	make_image(&img);
	base = img.len;
	/* No segment yet: everything pending, the chain starts at END's digest. */
	assert_int_equal(
	    queue_status_parse((unsigned char *)img.data, img.len, got, 3, &valid, digest), 0);
	assert_int_equal(valid, base);
	assert_memory_equal(digest, img.data + base - 32, 32);
	assert_int_equal(got[0].state, QRCPT_PENDING);

	memset(st, 0, sizeof(st));
	st[0] = (struct queue_rcpt_status){QRCPT_DELIVERED, 1, 1700000100, 0};
	st[2] = (struct queue_rcpt_status){QRCPT_DEFERRED, 1, 1700000100, 1700000400};
	idx[0] = 0;
	idx[1] = 2;
	queue_status_segment(&img, digest, idx, 2, st);
	st[2] = (struct queue_rcpt_status){QRCPT_BOUNCED, 2, 1700000400, 0};
	idx[0] = 2;
	queue_status_segment(&img, digest, idx, 1, st);

	assert_int_equal(queue_status_parse((unsigned char *)img.data, img.len, got, 3, &valid, d2),
	                 2);
	assert_int_equal(valid, img.len);
	assert_memory_equal(d2, digest, 32);
	assert_int_equal(got[0].state, QRCPT_DELIVERED);
	assert_int_equal(got[0].attempts, 1);
	assert_int_equal(got[1].state, QRCPT_PENDING);
	/* The later segment wins. */
	assert_int_equal(got[2].state, QRCPT_BOUNCED);
	assert_int_equal(got[2].attempts, 2);
	assert_int_equal(got[2].last, 1700000400);

	/* The message itself still reads (the spool accepts appended status). */
	assert_int_equal(
	    queue_msg_parse((unsigned char *)img.data, img.len, &m, QUEUE_PARSE_BODY, err, sizeof(err)), 0);
	assert_int_equal(m.env.nrcpts, 3);
	queue_msg_free(&m);
	buf_free(&img);
}

static void test_status_torn_tail(void **state)
{
	struct queue_rcpt_status st[3], got[3];
	unsigned char digest[32];
	struct queue_msg m;
	struct buf img;
	size_t valid, first_end, idx[1] = {1}, cut;
	char err[256];

	make_image(&img);
	queue_status_parse((unsigned char *)img.data, img.len, NULL, 0, NULL, digest);
	memset(st, 0, sizeof(st));
	st[1] = (struct queue_rcpt_status){QRCPT_DELIVERED, 1, 5, 0};
	queue_status_segment(&img, digest, idx, 1, st);
	first_end = img.len;
	st[1] = (struct queue_rcpt_status){QRCPT_BOUNCED, 9, 6, 0};
	queue_status_segment(&img, digest, idx, 1, st);

	/* Every cut inside the second segment keeps the first one. */
	for (cut = first_end; cut < img.len; cut++) {
		assert_int_equal(
		    queue_status_parse((unsigned char *)img.data, cut, got, 3, &valid, NULL), 1);
		assert_int_equal(valid, first_end);
		assert_int_equal(got[1].state, QRCPT_DELIVERED);
		/* ...and the spool still reads the message. */
		assert_int_equal(
		    queue_msg_parse((unsigned char *)img.data, cut, &m, 0, err, sizeof(err)), 0);
		queue_msg_free(&m);
	}
	/* A flipped byte in the last segment: that segment is dropped. */
	img.data[img.len - 40] ^= 1;
	assert_int_equal(
	    queue_status_parse((unsigned char *)img.data, img.len, got, 3, &valid, NULL), 1);
	assert_int_equal(got[1].state, QRCPT_DELIVERED);
	assert_int_equal(valid, first_end);
	img.data[img.len - 40] ^= 1;

	/* Zeros after END (a torn append on some file systems) are tolerated. */
	img.len = first_end;
	assert_int_equal(buf_append(&img, "\0\0\0\0\0\0\0\0", 8), 0);
	assert_int_equal(
	    queue_msg_parse((unsigned char *)img.data, img.len, &m, 0, err, sizeof(err)), 0);
	queue_msg_free(&m);
	assert_int_equal(
	    queue_status_parse((unsigned char *)img.data, img.len, got, 3, &valid, NULL), 1);
	assert_int_equal(valid, first_end);

	/* Recipient indexes out of range are ignored, not trusted. */
	img.len = first_end;
	queue_status_parse((unsigned char *)img.data, img.len, NULL, 0, NULL, digest);
	st[1] = (struct queue_rcpt_status){QRCPT_DELIVERED, 1, 5, 0};
	{
		struct queue_rcpt_status big[10];
		size_t i9 = 9;
		memset(big, 0, sizeof(big));
		big[9] = (struct queue_rcpt_status){QRCPT_DELIVERED, 1, 5, 0};
		queue_status_segment(&img, digest, &i9, 1, big);
	}
	assert_int_equal(
	    queue_status_parse((unsigned char *)img.data, img.len, got, 3, &valid, NULL), 2);
	buf_free(&img);

	/* Garbage after END that is not a status segment is still damage. */
	make_image(&img);
	assert_int_equal(buf_append(&img, "x", 1), 0);
	assert_int_equal(
	    queue_msg_parse((unsigned char *)img.data, img.len, &m, 0, err, sizeof(err)), -1);
	buf_free(&img);
}

static void test_state_names(void **state)
{
	assert_string_equal(queue_rcpt_state_str(QRCPT_DELIVERED), "delivered");
	assert_string_equal(queue_rcpt_state_str(QRCPT_EXPIRED), "expired");
	assert_string_equal(queue_rcpt_state_str(99), "unknown");
	assert_true(queue_rcpt_state_final(QRCPT_BOUNCED));
	assert_false(queue_rcpt_state_final(QRCPT_DEFERRED));
	assert_false(queue_rcpt_state_final(QRCPT_PENDING));
}

static void test_mx_order(void **state)
{
	struct mx_entry e[5];
	int seen_first[3] = {0, 0, 0}, round;

	for (round = 0; round < 200; round++) {
		memset(e, 0, sizeof(e));
		snprintf(e[0].host, sizeof(e[0].host), "c");
		e[0].pref = 20;
		snprintf(e[1].host, sizeof(e[1].host), "a0");
		e[1].pref = 10;
		snprintf(e[2].host, sizeof(e[2].host), "a1");
		e[2].pref = 10;
		snprintf(e[3].host, sizeof(e[3].host), "a2");
		e[3].pref = 10;
		snprintf(e[4].host, sizeof(e[4].host), "z");
		e[4].pref = 5;
		mx_sort(e, 5);
		assert_string_equal(e[0].host, "z");
		assert_int_equal(e[1].pref, 10);
		assert_int_equal(e[3].pref, 10);
		assert_string_equal(e[4].host, "c");
		seen_first[e[1].host[1] - '0']++;
	}
	/* Equal preferences are shuffled: each comes first sometimes. */
	assert_true(seen_first[0] > 20 && seen_first[1] > 20 && seen_first[2] > 20);

	memset(e, 0, sizeof(e));
	e[0].host[0] = '\0';
	assert_true(mx_is_null(e, 1));
	snprintf(e[0].host, sizeof(e[0].host), ".");
	assert_true(mx_is_null(e, 1));
	snprintf(e[1].host, sizeof(e[1].host), "mx.example");
	assert_false(mx_is_null(e, 2));
	assert_false(mx_is_null(e + 1, 1));
}

static void test_verp(void **state)
{
	char host[300], out[400];

	assert_string_equal(
	    verp_host("s@Acme.example", "rp", "bounces.p.example", 1, host, sizeof(host)),
	    "rp.Acme.example");
	assert_string_equal(
	    verp_host("s@acme.example", "rp", "bounces.p.example", 0, host, sizeof(host)),
	    "bounces.p.example");
	static const unsigned char key[32] = {1, 2, 3};
	char tag[VERP_TAG_LEN + 1], want[400];

	assert_int_equal(
	    verp_address(out, sizeof(out), "0123456789ABCDEFGHIJ", 3, 0, "rp.acme.example", key), 0);
	verp_tag(key, "0123456789ABCDEFGHIJ", 3, 0, tag);
	snprintf(want, sizeof(want), "bounce+0123456789ABCDEFGHIJ.3.%s@rp.acme.example", tag);
	assert_string_equal(out, want);
	assert_int_equal(
	    verp_address(out, sizeof(out), "0123456789ABCDEFGHIJ", 4, 1, "b.example", key), 0);
	verp_tag(key, "0123456789ABCDEFGHIJ", 4, 1, tag);
	snprintf(want, sizeof(want), "bounce+0123456789ABCDEFGHIJ.m4.%s@b.example", tag);
	assert_string_equal(out, want);
	assert_int_equal(verp_address(out, 10, "0123456789ABCDEFGHIJ", 0, 0, "b.example", key), -1);
	assert_string_equal(addr_domain("x@y@z.example"), "z.example");
	assert_string_equal(addr_domain("nodomain"), "");
}

static void test_pool_pick(void **state)
{
	struct pool_address p[3];
	int counts[3] = {0, 0, 0};
	uint32_t r;

	memset(p, 0, sizeof(p));
	snprintf(p[0].address, sizeof(p[0].address), "192.0.2.1");
	p[0].weight = 1;
	snprintf(p[1].address, sizeof(p[1].address), "2001:db8::1");
	p[1].weight = 5;
	snprintf(p[2].address, sizeof(p[2].address), "192.0.2.2");
	p[2].weight = 3;
	for (r = 0; r < 4000; r++) {
		int k = pool_pick(p, 3, AF_INET, r);
		assert_true(k == 0 || k == 2);
		counts[k]++;
	}
	/* Weights 1:3 among the IPv4 addresses, exactly over a full cycle. */
	assert_int_equal(counts[0], 1000);
	assert_int_equal(counts[2], 3000);
	assert_int_equal(pool_pick(p, 3, AF_INET6, 12345), 1);
	assert_int_equal(pool_pick(p, 1, AF_INET6, 12345), -1);
	assert_int_equal(pool_pick(p, 0, AF_INET, 1), -1);
	assert_int_equal(addr_family("127.0.0.2"), AF_INET);
	assert_int_equal(addr_family("::1"), AF_INET6);
	assert_int_equal(addr_family("mx.example"), AF_UNSPEC);
}

static void stuff(const char *in, const char *want)
{
	struct buf out;

	buf_init(&out, 1 << 20);
	smtp_dotstuff(&out, in, strlen(in));
	assert_string_equal(out.data, want);
	buf_free(&out);
}

static void test_dotstuff(void **state)
{
	stuff("a\r\n.b\r\n..c\r\n", "a\r\n..b\r\n...c\r\n.\r\n");
	stuff(".\r\n", "..\r\n.\r\n");
	stuff("", ".\r\n");
	/* No final CRLF: one is added before the dot. */
	stuff("a\r\n.b", "a\r\n..b\r\n.\r\n");
	/* Bare CR and bare LF never go out as such. */
	stuff("a\nb\rc\r\n", "a\r\nb\r\nc\r\n.\r\n");
	stuff("x\n.\n", "x\r\n..\r\n.\r\n");
	/* A dot in the middle of a line stays single. */
	stuff("a.b\r\n", "a.b\r\n.\r\n");
}

static void test_ehlo_keywords(void **state)
{
	unsigned long long size = 1;

	assert_int_equal(ehlo_keyword("PIPELINING", NULL), EXT_PIPELINING);
	assert_int_equal(ehlo_keyword("starttls", NULL), EXT_STARTTLS);
	assert_int_equal(ehlo_keyword("SIZE 10240000", &size), EXT_SIZE);
	assert_true(size == 10240000);
	assert_int_equal(ehlo_keyword("SIZE", &size), EXT_SIZE);
	assert_true(size == 0);
	assert_int_equal(ehlo_keyword("SIZE 12x", &size), EXT_SIZE);
	assert_true(size == 0);
	assert_int_equal(ehlo_keyword("SMTPUTF8", NULL), EXT_SMTPUTF8);
	assert_int_equal(ehlo_keyword("8BITMIME", NULL), EXT_8BITMIME);
	assert_int_equal(ehlo_keyword("AUTH LOGIN PLAIN", NULL), EXT_AUTH_PLAIN);
	assert_int_equal(ehlo_keyword("AUTH LOGIN", NULL), 0);
	assert_int_equal(ehlo_keyword("AUTH PLAINX", NULL), 0);
	assert_int_equal(ehlo_keyword("PIPELININGX", NULL), 0);
	assert_int_equal(ehlo_keyword("", NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_status_roundtrip),
	    cmocka_unit_test(test_status_torn_tail),
	    cmocka_unit_test(test_state_names),
	    cmocka_unit_test(test_mx_order),
	    cmocka_unit_test(test_verp),
	    cmocka_unit_test(test_pool_pick),
	    cmocka_unit_test(test_dotstuff),
	    cmocka_unit_test(test_ehlo_keywords),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
