/* Error messages into a caller's buffer: the library's one way of saying what went wrong. */
#ifndef PVQ_ERRMSG_H
#define PVQ_ERRMSG_H

#include <stdarg.h>
#include <stddef.h>

/* Formats into err (nothing when err is NULL or err_len is 0). */
void err_vformat(char *err, size_t err_len, const char *fmt, va_list ap);
/* Formats into err and returns -1, for `return err_fail(...)`. */
int err_fail(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
