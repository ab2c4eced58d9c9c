package main

// A plain TCP forwarder. The control plane listens on the host's loopback
// only; the node lives in its own network namespace, so `node forward` (run
// on the host side of the node's veth link) carries the node's and the pods'
// apiserver connections to loopback. TLS passes through untouched.

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func forwardMain(args []string) int {
	fs := flag.NewFlagSet("forward", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to accept on (required)")
	to := fs.String("to", "", "loopback address to connect to (required)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *listen == "" || *to == "" {
		fmt.Fprintln(os.Stderr, "node forward: --listen and --to are required")
		return 2
	}
	if host, _, err := net.SplitHostPort(*to); err != nil || !net.ParseIP(host).IsLoopback() {
		fmt.Fprintf(os.Stderr, "node forward: --to %q must be a loopback host:port\n", *to)
		return 2
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "node forward: %v\n", err)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sigs; ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			return 0
		}
		go pipe(c, *to)
	}
}

func pipe(c net.Conn, to string) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", to, 5*time.Second)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(u, c)
	go cp(c, u)
	<-done
	<-done
}
