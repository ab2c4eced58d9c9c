// Package e2e holds the node tier's end-to-end tests: they run against the
// real one-node Kubernetes that tests/node/node.sh brings up (pods are real
// containers in containerd), drive it with the real kubectl and helm, and
// send HTTP to Services' ClusterIPs, which the host routes into the node.
//
// Run them with tests/node/run.sh (which brings the node up and down), or
// by hand: `source <node dir>/env && cd tests/node/e2e && go test -v ./...`.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// env is what node.sh's env file exports.
type env struct {
	kubectl, helm, kubeconfig, repo string
}

func loadEnv(t *testing.T) env {
	t.Helper()
	e := env{
		kubectl:    os.Getenv("SAMETAG_KUBECTL"),
		helm:       os.Getenv("SAMETAG_HELM"),
		kubeconfig: os.Getenv("KUBECONFIG"),
		repo:       os.Getenv("SAMETAG_REPO"),
	}
	if e.kubectl == "" || e.kubeconfig == "" {
		t.Fatal("no node: run tests/node/run.sh, or source the env file that tests/node/node.sh up prints")
	}
	if e.repo == "" {
		e.repo = "../../.."
	}
	return e
}

// run executes a command with a bounded time and returns its stdout.
func run(t *testing.T, timeout time.Duration, stdin string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func (e env) k(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(t, 2*time.Minute, "", e.kubectl, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e env) kTry(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return run(t, 2*time.Minute, "", e.kubectl, args...)
}

func (e env) apply(t *testing.T, manifest string) {
	t.Helper()
	if _, err := run(t, 2*time.Minute, manifest, e.kubectl, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
}

func (e env) jsonGet(t *testing.T, into any, args ...string) {
	t.Helper()
	out := e.k(t, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), into); err != nil {
		t.Fatalf("kubectl %v: %v", args, err)
	}
}

// eventually polls cond until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if last = cond(); last == nil {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, last)
}

// rollout waits for a Deployment or StatefulSet to finish rolling out.
func (e env) rollout(t *testing.T, ns, kind, name string, timeout time.Duration) {
	t.Helper()
	if _, err := run(t, timeout+10*time.Second, "", e.kubectl, "-n", ns, "rollout", "status",
		kind+"/"+name, "--timeout="+timeout.String()); err != nil {
		out, _ := e.kTry(t, "-n", ns, "get", "pods", "-o", "wide")
		ev, _ := e.kTry(t, "-n", ns, "get", "events", "--sort-by=.lastTimestamp")
		t.Fatalf("%v\npods:\n%s\nevents:\n%s", err, out, ev)
	}
}

// clusterIP returns a Service's ClusterIP.
func (e env) clusterIP(t *testing.T, ns, svc string) string {
	t.Helper()
	ip := strings.TrimSpace(e.k(t, "-n", ns, "get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"))
	if net.ParseIP(ip) == nil {
		t.Fatalf("service %s/%s has no ClusterIP (%q)", ns, svc, ip)
	}
	return ip
}

// client is the tests' HTTP client: short timeouts, keep-alive off so that
// kube-proxy spreads requests over the pods.
func client() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext:       (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		},
	}
}

// namespace creates a fresh namespace and deletes it (waiting) at the end.
func (e env) namespace(t *testing.T, name string, labels ...string) string {
	t.Helper()
	_, _ = e.kTry(t, "delete", "namespace", name, "--wait=true", "--timeout=90s")
	e.k(t, "create", "namespace", name)
	if len(labels) > 0 {
		e.k(t, append([]string{"label", "namespace", name}, labels...)...)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := e.kTry(t, "-n", name, "get", "all,events", "-o", "wide")
			t.Logf("namespace %s at failure:\n%s", name, out)
		}
		if _, err := e.kTry(t, "delete", "namespace", name, "--wait=true", "--timeout=120s"); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return name
}

func execCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, name, args...)
}
