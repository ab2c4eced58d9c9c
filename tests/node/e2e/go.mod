module sametag.dev/tests/node/e2e

go 1.24
