/* qfile: reading queue files from disk and listing the queue. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/spool_int.h"

int queue_read_fileat(int dirfd, const char *name, struct queue_msg *m, int want_body, char *err,
                      size_t errlen)
{
	unsigned char *img = NULL;
	struct stat st;
	size_t n = 0;
	int fd, rc = -1;

	memset(m, 0, sizeof(*m));
	fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1) {
		snprintf(err, errlen, "open: %s", strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1) {
		snprintf(err, errlen, "stat: %s", strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "not a regular file");
		goto out;
	}
	if (st.st_size > QUEUE_FILE_MAX) {
		snprintf(err, errlen, "file too large (%lld bytes)", (long long)st.st_size);
		goto out;
	}
	img = xmalloc((size_t)st.st_size);
	while (n < (size_t)st.st_size) {
		ssize_t r = read(fd, img + n, (size_t)st.st_size - n);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			snprintf(err, errlen, "read: %s", strerror(errno));
			goto out;
		}
		if (r == 0)
			break; /* shrank under us: the walk reports it truncated */
		n += (size_t)r;
	}
	rc = queue_msg_parse(img, n, m, want_body ? QUEUE_PARSE_BODY : 0, err, errlen);
out:
	free(img);
	close(fd);
	return rc;
}

int queue_read_file(const char *path, struct queue_msg *m, int want_body, char *err, size_t errlen)
{
	return queue_read_fileat(AT_FDCWD, path, m, want_body, err, errlen);
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int queue_list_files(const char *dir, void (*fn)(void *arg, const char *path), void *arg)
{
	struct dirent *de;
	struct buf path;
	char **names = NULL;
	size_t n = 0, cap = 0, i;
	DIR *d;

	buf_init(&path, 8192);
	if (buf_printf(&path, "%s/queue", dir) == -1) {
		errno = ENAMETOOLONG;
		return -1;
	}
	d = opendir(path.data);
	if (d == NULL) {
		buf_free(&path);
		return -1;
	}
	while ((errno = 0, de = readdir(d)) != NULL) {
		if (!queue_id_valid(de->d_name))
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 256;
			names = xrealloc(names, cap * sizeof(*names));
		}
		names[n++] = xstrdup(de->d_name);
	}
	if (errno != 0) {
		int e = errno;
		closedir(d);
		for (i = 0; i < n; i++)
			free(names[i]);
		free(names);
		buf_free(&path);
		errno = e;
		return -1;
	}
	closedir(d);
	if (n > 1) /* qsort(NULL, 0) is undefined */
		qsort(names, n, sizeof(*names), name_cmp);
	for (i = 0; i < n; i++) {
		buf_reset(&path);
		if (buf_printf(&path, "%s/queue/%s", dir, names[i]) == 0)
			fn(arg, path.data);
		free(names[i]);
	}
	free(names);
	buf_free(&path);
	return n > (size_t)0x7fffffff ? 0x7fffffff : (int)n;
}
