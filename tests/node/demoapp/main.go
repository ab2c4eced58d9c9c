// Command demoapp is the application of the node tier's end-to-end tests: a
// tiny HTTP server that, like nginx or Apache behind a load balancer, mints
// its own ETags that disagree between replicas (a random per-process salt in
// every tag), so only the injected sametag sidecar can make them agree.
//
// Items live as files under --data (a hostPath shared by every replica on
// the one test node), so all replicas serve the same representation:
//
//	GET  /items/NAME   the item's bytes (404 if absent), ETag "<salt>-<n>"
//	PUT  /items/NAME   replace it (no preconditions of its own: behind sametag
//	                   the sidecar evaluates If-Match before the app sees it)
//	GET  /healthz      200 "ok"
//	GET  /whoami       the pod name (HOSTNAME) and the process's salt
//	GET  /lookup?name=N  the addresses cluster DNS gives for N (node checks)
//	GET  /dial?addr=A    whether a TCP connection to A opens (node checks)
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	maxBody    = 1 << 20
	drainDelay = 3 * time.Second
)

var (
	salt    string
	counter atomic.Int64
)

func main() {
	listen := flag.String("listen", envOr("DEMO_LISTEN", "0.0.0.0:8080"), "address to serve on")
	data := flag.String("data", envOr("DEMO_DATA", "/data"), "directory holding the items")
	flag.Parse()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		log.Fatalf("demoapp: random salt: %v", err)
	}
	salt = hex.EncodeToString(b)
	if err := os.MkdirAll(*data, 0o777); err != nil {
		log.Fatalf("demoapp: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%s %s\n", os.Getenv("HOSTNAME"), salt)
	})
	mux.HandleFunc("/lookup", func(w http.ResponseWriter, r *http.Request) {
		addrs, err := net.LookupHost(r.URL.Query().Get("name"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintln(w, strings.Join(addrs, " "))
	})
	mux.HandleFunc("/dial", func(w http.ResponseWriter, r *http.Request) {
		c, err := net.DialTimeout("tcp", r.URL.Query().Get("addr"), 3*time.Second)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		c.Close()
		io.WriteString(w, "connected\n")
	})
	mux.HandleFunc("/items/", func(w http.ResponseWriter, r *http.Request) { items(w, r, *data) })
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("demoapp: serving on %s, data %s, salt %s", *listen, *data, salt)
	// On SIGTERM keep serving while the endpoint removal propagates, then
	// drain: a rolling restart of well-behaved apps fails no request.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		time.Sleep(drainDelay)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}

func items(w http.ResponseWriter, r *http.Request, dir string) {
	name := strings.TrimPrefix(r.URL.Path, "/items/")
	if name == "" || strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, ".") {
		http.Error(w, "bad item name", http.StatusBadRequest)
		return
	}
	path := filepath.Join(dir, name)
	// A per-process tag: the same bytes get a different ETag on every replica
	// and after every restart, like mtime- or inode-based tags do.
	tag := fmt.Sprintf("\"%s-%d\"", salt, counter.Add(1))
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		body, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			http.NotFound(w, r)
			return
		} else if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("ETag", tag)
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(body)
	case http.MethodPut:
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil || len(body) > maxBody {
			http.Error(w, "body too large or unreadable", http.StatusRequestEntityTooLarge)
			return
		}
		tmp := fmt.Sprintf("%s.%s.tmp", path, salt)
		if err := os.WriteFile(tmp, body, 0o666); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if err := os.Rename(tmp, path); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("ETag", tag)
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
