module sametag.dev/tests/node/demoapp

go 1.24
