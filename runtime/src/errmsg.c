#include "errmsg.h"

#include <stdio.h>

void err_vformat(char *err, size_t err_len, const char *fmt, va_list ap) {
    if (err && err_len) vsnprintf(err, err_len, fmt, ap);
}

int err_fail(char *err, size_t err_len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    err_vformat(err, err_len, fmt, ap);
    va_end(ap);
    return -1;
}
