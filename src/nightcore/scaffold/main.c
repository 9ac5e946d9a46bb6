/* $tenant: prints "hello from $tenant" and exits 0.
 *
 * Built by `nightcore build` with the ziglang package (pip install ziglang):
 *   python -m ziglang cc --target=wasm32-wasi -O2 -s -Wl,-z,stack-size=262144 -o module.wasm main.c
 * WASI gives it exactly what manifest.toml grants: stdout and stderr, argv, the listed
 * environment variables and directories; nothing else on the host.
 */
#include <stdio.h>

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    printf("hello from $tenant\n");
    return 0;
}
