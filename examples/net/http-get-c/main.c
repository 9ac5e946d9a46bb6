/*
 * http-get-c: one HTTP GET through the Night Core host API (docs/net.md), from C.
 *
 * Usage (the manifest's args): http-get-c URL [METHOD]
 * Prints "status=<code> bytes=<n>" and then the response body, or "error=<n> (<code>)" with
 * the host's stable error number. Exit status: 0 on a response, 1 on an error, 2 on usage.
 *
 * The host function is imported from the module "nightcore"; every pointer is an offset into
 * this module's linear memory and every length a byte count (strings are not NUL-terminated).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

__attribute__((import_module("nightcore"), import_name("http_request")))
int32_t nc_http_request(const char *method, uint32_t method_len, const char *url,
                        uint32_t url_len, const void *body, uint32_t body_len, void *resp,
                        uint32_t resp_cap, uint32_t *status);

static const char *error_name(int32_t rc) {
    switch (rc) {
    case -1: return "NET_FAULT";
    case -2: return "NET_URL_INVALID";
    case -3: return "NET_DENIED";
    case -4: return "NET_ADDRESS_DENIED";
    case -5: return "NET_RESOLVE_FAILED";
    case -6: return "NET_CONNECT_FAILED";
    case -7: return "NET_TIMEOUT";
    case -8: return "NET_REQUEST_TOO_LARGE";
    case -9: return "NET_RESPONSE_TOO_LARGE";
    case -10: return "NET_LIMIT";
    case -11: return "NET_PROTOCOL";
    case -12: return "NET_UNSUPPORTED";
    case -13: return "NET_HOST_ERROR";
    default: return "unknown";
    }
}

static char response[64 * 1024];

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fputs("usage: http-get-c URL [METHOD]\n", stderr);
        return 2;
    }
    const char *url = argv[1];
    const char *method = argc == 3 ? argv[2] : "GET";
    uint32_t status = 0;
    int32_t rc = nc_http_request(method, (uint32_t)strlen(method), url, (uint32_t)strlen(url),
                                 NULL, 0, response, (uint32_t)sizeof response, &status);
    if (rc < 0) {
        printf("error=%d (%s) status=%u\n", (int)rc, error_name(rc), (unsigned)status);
        return 1;
    }
    printf("status=%u bytes=%d\n", (unsigned)status, (int)rc);
    fwrite(response, 1, (size_t)rc, stdout);
    if (rc > 0 && response[rc - 1] != '\n') {
        putchar('\n');
    }
    return 0;
}
