/*
 * fuzz_queue_rec: libFuzzer harness for the queue file reader (pure code).
 * Each input is checked twice: as a whole file image (framing, magic and
 * checksum must hold it back), and with a valid END appended so that the
 * envelope and message parsing behind the checksum gets fuzzed too.
 *
 *   make -C tests/fuzz run FUZZERS=fuzz_queue_rec FUZZ_SECONDS=60
 * or by hand:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz/fuzz_queue_rec.c \
 *     queue/record.c queue/envelope.c queue/qid.c common/buf.c common/util.c \
 *     common/log.c -lcrypto -o build/fuzz_queue_rec
 *   build/fuzz_queue_rec -max_total_time=60
 */
#include <stdlib.h>
#include <string.h>

#include "queue/queue.h"

/* Reads every byte it is given, so an out-of-bounds pointer trips ASan. */
static int touch(void *arg, int type, const unsigned char *data, size_t len)
{
	unsigned *sum = arg;
	size_t i;

	for (i = 0; i < len; i++)
		*sum += data[i];
	return type == 99 ? -1 : 0; /* also exercise a rejecting callback */
}

static void parse(const unsigned char *p, size_t n)
{
	struct queue_msg m;
	char err[256];

	if (queue_msg_parse(p, n, &m, QUEUE_PARSE_BODY, err, sizeof(err)) == 0) {
		size_t i;
		/* What the parser promises: a valid id, text fields, a message. */
		if (!queue_id_valid(m.env.id) || m.env.nrcpts == 0 || m.env.sender == NULL ||
		    m.env.tenant == NULL || m.header_len > m.message.len)
			abort();
		for (i = 0; i < m.env.nrcpts; i++)
			if (strlen(m.env.rcpts[i]) == 0)
				abort();
	}
	queue_msg_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned sum = 0;
	char err[256];
	unsigned char digest[32], *img;
	size_t n = size + QREC_HDR_LEN + sizeof(digest);

	queue_rec_walk(data, size, 0, touch, &sum, err, sizeof(err));
	parse(data, size);

	/* The same bytes with a correct END: past the checksum. */
	img = malloc(n);
	if (img == NULL)
		return 0;
	memcpy(img, data, size);
	sha256(data, size, digest);
	queue_rec_header(img + size, QREC_END, sizeof(digest));
	memcpy(img + size + QREC_HDR_LEN, digest, sizeof(digest));
	queue_rec_walk(img, n, 0, touch, &sum, err, sizeof(err));
	parse(img, n);
	free(img);
	return 0;
}
