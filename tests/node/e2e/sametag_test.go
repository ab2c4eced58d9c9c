package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	operatorNS = "sametag-system"
	release    = "sametag"
	appNS      = "node-sametag"
)

// TestSametagOnTheNode is issue 7's end-to-end scenario, in order: the chart
// installs the operator as real pods; an ETagStore gets a real Redis; an
// annotated Deployment gets the native sidecar injected; the seed scenario
// runs through the Service; rolling restarts fail nothing; uninstall leaves
// nothing behind (CRDs excepted: Helm never deletes a chart's crds/; the
// operator's own Secret and Lease go with the webhook configuration that
// owns them). Each
// step needs the one before, so a failure stops the test.
func TestSametagOnTheNode(t *testing.T) {
	e := loadEnv(t)
	if e.helm == "" {
		t.Fatal("SAMETAG_HELM is not set")
	}
	helmHome := t.TempDir()
	helm := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		cmd := execCommand(ctx, e.helm, args...)
		cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+helmHome+"/cache",
			"HELM_CONFIG_HOME="+helmHome+"/config", "HELM_DATA_HOME="+helmHome+"/data")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("helm %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	t.Cleanup(func() {
		// Best effort when a step failed half-way; the last step checks the
		// clean uninstall itself.
		_, _ = e.kTry(t, "delete", "namespace", appNS, "--wait=true", "--timeout=120s")
		_, _ = helm("uninstall", release, "-n", operatorNS, "--wait", "--timeout=2m")
		_, _ = e.kTry(t, "delete", "namespace", operatorNS, "--wait=true", "--timeout=120s")
	})
	c := client()
	var svcURL string

	step(t, "1 helm install: the operator runs as pods (the release image, non-root), serves its webhook, patches its caBundle", func(t *testing.T) {
		chart := filepath.Join(e.repo, "charts", "sametag")
		if _, err := helm("install", release, chart, "-n", operatorNS, "--create-namespace",
			"--set", "image.repository=sametag.local/sametag-operator", "--set", "image.tag=dev",
			"--set", "image.pullPolicy=Never", "--set", "sidecarImage=sametag.local/sametag-sidecar:dev",
			"--set", "replicaCount=2", "--set", "logFormat=text",
			"--wait", "--timeout=4m"); err != nil {
			out, _ := e.kTry(t, "-n", operatorNS, "get", "pods,events", "-o", "wide")
			logs, _ := e.kTry(t, "-n", operatorNS, "logs", "-l", "app.kubernetes.io/instance="+release, "--tail=30", "--all-containers")
			t.Fatalf("%v\n%s\n%s", err, out, logs)
		}
		e.rollout(t, operatorNS, "deployment", release, 3*time.Minute)
		pods := e.podNames(t, operatorNS, "app.kubernetes.io/instance="+release)
		if len(pods) != 2 {
			t.Fatalf("want 2 operator pods, got %v", pods)
		}
		// The release image (operator/Containerfile), non-root, no shell.
		e.assertReleaseImage(t, operatorNS, pods[0], "operator", "sametag-operator")
		sa := strings.TrimSpace(e.k(t, "-n", operatorNS, "get", "pod", pods[0], "-o", "jsonpath={.spec.serviceAccountName}"))
		if sa == "" || sa == "default" {
			t.Fatalf("operator pod runs as ServiceAccount %q, not the chart's", sa)
		}
		// Leader election: exactly one replica holds the Lease.
		eventually(t, 90*time.Second, "a replica holds the leader Lease", func() error {
			holder, err := e.kTry(t, "-n", operatorNS, "get", "lease", release+"-operator", "-o", "jsonpath={.spec.holderIdentity}")
			if err != nil {
				return err
			}
			for _, p := range pods {
				if strings.Contains(holder, p) {
					return nil
				}
			}
			return fmt.Errorf("holder %q is none of %v", holder, pods)
		})
		// The operator patches its CA into the chart's webhook configuration.
		eventually(t, 90*time.Second, "caBundle patched", func() error {
			out, err := e.kTry(t, "get", "mutatingwebhookconfiguration", release, "-o",
				`jsonpath={range .webhooks[*]}{.clientConfig.service.name}={.clientConfig.caBundle}{"\n"}{end}`)
			if err != nil {
				return err
			}
			lines := strings.Fields(out)
			if len(lines) == 0 {
				return errors.New("no webhooks")
			}
			for _, l := range lines {
				svc, ca, _ := strings.Cut(l, "=")
				if svc == "" || len(ca) < 100 {
					return fmt.Errorf("webhook entry %q: want a Service reference and a caBundle", l)
				}
			}
			return nil
		})
		// What the operator creates for itself is owned by the release's
		// webhook configuration, so step 6's uninstall garbage-collects it.
		uid := strings.TrimSpace(e.k(t, "get", "mutatingwebhookconfiguration", release, "-o", "jsonpath={.metadata.uid}"))
		eventually(t, 60*time.Second, "certificate Secret and Lease owned by the webhook configuration", func() error {
			for _, obj := range []string{"secret/" + release + "-webhook-tls", "lease/" + release + "-operator"} {
				owners, err := e.kTry(t, "-n", operatorNS, "get", obj, "-o",
					`jsonpath={range .metadata.ownerReferences[*]}{.kind}/{.name}/{.uid}{" "}{end}`)
				if err != nil {
					return err
				}
				if want := "MutatingWebhookConfiguration/" + release + "/" + uid; strings.TrimSpace(owners) != want {
					return fmt.Errorf("%s owners %q, want %q", obj, owners, want)
				}
			}
			return nil
		})
	})

	step(t, "2 ETagStore: a Redis pod becomes Ready and requires its password", func(t *testing.T) {
		// Lives across the following steps; the test's cleanup deletes it.
		_, _ = e.kTry(t, "delete", "namespace", appNS, "--wait=true", "--timeout=120s")
		e.k(t, "create", "namespace", appNS)
		e.apply(t, fmt.Sprintf(`apiVersion: sametag.dev/v1alpha1
kind: ETagStore
metadata: {name: demo, namespace: %s}
spec:
  redis:
    managed: {image: sametag.local/redis:dev}
  policy:
    mode: Validate
    routes:
    - {path: /items/trusted-*, mode: Trust, maxAge: 120s}
    - {path: /items/**, mode: Validate, requirePreconditions: false}
  sidecar: {image: sametag.local/sametag-sidecar:dev, imagePullPolicy: Never}
`, appNS))
		eventually(t, 3*time.Minute, "ETagStore Ready", func() error {
			out, err := e.kTry(t, "-n", appNS, "get", "ets", "demo", "-o",
				`jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.endpoint}`)
			if err != nil {
				return err
			}
			if !strings.HasPrefix(out, "True ") || len(strings.TrimSpace(strings.TrimPrefix(out, "True"))) == 0 {
				return fmt.Errorf("status %q", out)
			}
			return nil
		})
		table := e.k(t, "-n", appNS, "get", "ets")
		if !strings.Contains(table, "True") || !strings.Contains(table, "6379") {
			t.Fatalf("kubectl get ets does not show Ready and the endpoint:\n%s", table)
		}
		t.Logf("kubectl get ets:\n%s", table)
		e.rollout(t, appNS, "statefulset", "demo-redis", 3*time.Minute)
		noAuth, err := e.kTry(t, "-n", appNS, "exec", "demo-redis-0", "-c", "redis", "--",
			"sh", "-c", "REDISCLI_AUTH= redis-cli -p 6379 ping 2>&1")
		if !strings.Contains(noAuth, "NOAUTH") {
			t.Fatalf("redis answered without the password: %q (%v)", noAuth, err)
		}
		withAuth := e.k(t, "-n", appNS, "exec", "demo-redis-0", "-c", "redis", "--", "sh", "-c", "redis-cli -p 6379 ping")
		if strings.TrimSpace(withAuth) != "PONG" {
			t.Fatalf("redis with the password: %q", withAuth)
		}
	})

	step(t, "3 annotated Deployment: native sidecar injected (the release image, non-root), Ready through its probes, Service reaches it", func(t *testing.T) {
		e.apply(t, demoManifest(appNS, 3, `sametag.dev/inject: "true"`))
		e.rollout(t, appNS, "deployment", "demo", 4*time.Minute)
		pods := e.podNames(t, appNS, "app=demo")
		if len(pods) != 3 {
			t.Fatalf("want 3 demo pods, got %v", pods)
		}
		for _, p := range pods {
			out := e.k(t, "-n", appNS, "get", "pod", p, "-o",
				`jsonpath={range .spec.initContainers[*]}{.name}={.image}={.restartPolicy}={.readinessProbe.httpGet.path}{"\n"}{end}`)
			if !strings.Contains(out, "sametag.local/sametag-sidecar:dev=Always=") {
				t.Fatalf("pod %s has no native sidecar (initContainers: %q)", p, out)
			}
			ready := e.k(t, "-n", appNS, "get", "pod", p, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
			if ready != "True" {
				t.Fatalf("pod %s not Ready", p)
			}
		}
		// The injected sidecar runs the release image (sidecar/Containerfile)
		// under the webhook's security context: non-root, no shell.
		e.assertReleaseImage(t, appNS, pods[0], "sametag-sidecar", "sametag-sidecar")
		svcURL = "http://" + e.clusterIP(t, appNS, "demo")
		waitRoutable(t, c, svcURL+"/healthz")
		resp, err := c.Get(svcURL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if !strings.Contains(resp.Header.Get("Cache-Status"), "sametag") {
			t.Fatalf("the Service did not reach the sidecar: no Cache-Status header (headers %v)", resp.Header)
		}
	})

	step(t, "4 seed scenario through the Service: one ETag, 304s, no lost update, Trust, Redis loss fails no GET", func(t *testing.T) {
		// Written first: a validation is trusted only once the write's trust
		// guard (the sidecar's upstream timeout, 30 s) has passed.
		put(t, c, svcURL+"/items/trusted-doc", "version 1\n")
		trustedFrom := time.Now().Add(31 * time.Second)
		put(t, c, svcURL+"/items/page", strings.Repeat("the same page on every replica\n", 64))
		tag := get(t, c, svcURL+"/items/page", "", 200).Header.Get("ETag")
		if tag == "" {
			t.Fatal("no ETag")
		}
		for i := 0; i < 60; i++ {
			r := get(t, c, svcURL+"/items/page", tag, 304)
			if got := r.Header.Get("ETag"); got != tag {
				t.Fatalf("revalidation %d: ETag %q, want %q", i, got, tag)
			}
		}
		// Every replica answered some of those (kube-proxy spreads connections).
		if seen := replicasReached(t, c, svcURL+"/whoami", 3); len(seen) != 3 {
			t.Fatalf("traffic reached %d of 3 replicas: %v", len(seen), seen)
		}

		// Concurrent read-modify-write with If-Match, as users with their own
		// credentials under two names of the Service: no increment is lost,
		// and the writers really met (412s).
		put(t, c, svcURL+"/items/counter", "0")
		const workers, each = 6, 5
		var done, conflicts atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		deadline := time.Now().Add(2 * time.Minute)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				who := writer{user: fmt.Sprintf("Bearer user-%d", w), host: hostNames[w%len(hostNames)]}
				for n := 0; n < each; {
					if time.Now().After(deadline) {
						errs <- errors.New("increments did not finish in 2m")
						return
					}
					res, err := increment(c, svcURL+"/items/counter", who)
					if err != nil {
						errs <- err
						return
					}
					switch res {
					case applied:
						n++
						done.Add(1)
					case conflict:
						conflicts.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(get(t, c, svcURL+"/items/counter", "", 200).Body)
		if got, _ := strconv.Atoi(string(b)); int64(got) != done.Load() || got != workers*each {
			t.Fatalf("lost update: counter %q after %d successful conditional writes", b, done.Load())
		}
		if conflicts.Load() == 0 {
			t.Fatalf("%d concurrent writers never met (no 412): the test did not exercise the lock", workers)
		}
		t.Logf("%d conditional writes applied, %d lost the race with 412", done.Load(), conflicts.Load())

		// Trust on real pods: revalidations answered from the store, and a
		// write by another user under another Service name ends them on
		// every replica.
		time.Sleep(time.Until(trustedFrom))
		trustedTag := get(t, c, svcURL+"/items/trusted-doc", "", 200).Header.Get("ETag")
		hits := 0
		for i := 0; i < 30; i++ {
			r := get(t, c, svcURL+"/items/trusted-doc", trustedTag, 304)
			if r.Header.Get("Cache-Status") == "sametag; hit" {
				hits++
			}
		}
		if hits < 20 {
			t.Fatalf("Trust route: %d of 30 revalidations answered from the store, want at least 20", hits)
		}
		// Out-of-band invalidation through the cluster (a batch job changed
		// the data): once `sametag-operator invalidate` returns, no replica
		// answers a revalidation from the store; the app is asked again.
		out, err := run(t, time.Minute, "", operatorBin(e), "invalidate", "-n", appNS, "--store", "demo", "--path", "/items/trusted-*")
		if err != nil {
			t.Fatalf("sametag-operator invalidate: %v (output %q)", err, out)
		}
		if !strings.Contains(out, "ok ") {
			t.Fatalf("sametag-operator invalidate printed %q", out)
		}
		for i := 0; i < 15; i++ {
			r := get(t, c, svcURL+"/items/trusted-doc", trustedTag, 304)
			if cs := r.Header.Get("Cache-Status"); cs == "sametag; hit" {
				t.Fatalf("revalidation %d after the purge returned was answered from the store (%q)", i, cs)
			}
		}
		t.Logf("invalidate: %s", strings.TrimSpace(out))
		req, _ := http.NewRequest(http.MethodPut, svcURL+"/items/trusted-doc", strings.NewReader("version 2\n"))
		req.Host = hostNames[1]
		req.Header.Set("Authorization", "Bearer another-user")
		req.Header.Set("If-Match", trustedTag)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("conditional write to the Trust route: %d", resp.StatusCode)
		}
		for i := 0; i < 15; i++ {
			r := get(t, c, svcURL+"/items/trusted-doc", trustedTag, 200)
			if b, _ := io.ReadAll(r.Body); string(b) != "version 2\n" {
				t.Fatalf("after the write: body %q", b)
			}
		}
		t.Logf("Trust route: %d of 30 revalidations from the store; no 304 for the old tag after another user's write", hits)

		// Redis deleted mid-traffic: every GET still succeeds.
		stop := traffic(c, svcURL+"/items/page", tag)
		time.Sleep(2 * time.Second)
		e.k(t, "-n", appNS, "delete", "pod", "demo-redis-0", "--wait=false")
		time.Sleep(8 * time.Second)
		e.rollout(t, appNS, "statefulset", "demo-redis", 3*time.Minute)
		time.Sleep(3 * time.Second)
		if res := stop(); res.failed > 0 || res.ok < 20 {
			t.Fatalf("GETs while Redis restarted: %d ok, %d failed (first: %v)", res.ok, res.failed, res.first)
		} else {
			t.Logf("GETs while Redis restarted: %d ok, 0 failed", res.ok)
		}
		// Conditional writes work again on the replaced Redis (each sidecar
		// reconnects on its own; 503s until then are retried).
		before := counterValue(t, c, svcURL+"/items/counter")
		written := 0
		eventually(t, 90*time.Second, "conditional writes work on the new Redis pod", func() error {
			for written < 5 {
				res, err := increment(c, svcURL+"/items/counter", writer{user: "Bearer after-redis"})
				if err != nil {
					return err
				}
				if res != applied {
					return fmt.Errorf("%d of 5 conditional writes applied so far", written)
				}
				written++
			}
			return nil
		})
		if got := counterValue(t, c, svcURL+"/items/counter"); got != before+written {
			t.Fatalf("after the Redis pod was replaced: counter %d, want %d", got, before+written)
		}
	})

	step(t, "5 rolling restarts of the app and the operator fail no GET and lose no write", func(t *testing.T) {
		stop := traffic(c, svcURL+"/items/page", "")
		before := counterValue(t, c, svcURL+"/items/counter")
		stopWriters := writers(c, svcURL+"/items/counter")
		e.k(t, "-n", appNS, "rollout", "restart", "deployment/demo")
		e.rollout(t, appNS, "deployment", "demo", 4*time.Minute)
		e.k(t, "-n", operatorNS, "rollout", "restart", "deployment/"+release)
		e.rollout(t, operatorNS, "deployment", release, 3*time.Minute)
		time.Sleep(5 * time.Second)
		w := stopWriters()
		if res := stop(); res.failed > 0 || res.ok < 20 {
			t.Fatalf("GETs during rolling restarts: %d ok, %d failed (first: %v)", res.ok, res.failed, res.first)
		} else {
			t.Logf("GETs during rolling restarts of the app and the operator: %d ok, 0 failed", res.ok)
		}
		// A write whose answer was lost in a terminating pod may or may not
		// have been applied; every acknowledged one must be.
		got := counterValue(t, c, svcURL+"/items/counter")
		if w.applied < 5 || got < before+w.applied || got > before+w.applied+w.unknown {
			t.Fatalf("writes during rolling restarts: counter %d -> %d after %d acknowledged, %d unanswered (%d 412, first error %v)",
				before, got, w.applied, w.unknown, w.conflicts, w.first)
		}
		t.Logf("writes during rolling restarts: %d acknowledged, %d 412, %d unanswered; counter %d -> %d",
			w.applied, w.conflicts, w.unknown, before, got)
		// The restarted operator still injects: scale up, the new pod has it.
		e.k(t, "-n", appNS, "scale", "deployment/demo", "--replicas=4")
		e.rollout(t, appNS, "deployment", "demo", 3*time.Minute)
		for _, p := range e.podNames(t, appNS, "app=demo") {
			out := e.k(t, "-n", appNS, "get", "pod", p, "-o", "jsonpath={.spec.initContainers[*].image}")
			if !strings.Contains(out, "sametag-sidecar") {
				t.Fatalf("pod %s (after the operator restart) has no sidecar", p)
			}
		}
	})

	step(t, "5b failover store: deleting the primary under checked traffic fails no GET, loses nothing, 503s only in the window; the PDB refuses a second eviction", func(t *testing.T) {
		failoverStep(t, e)
	})

	step(t, "6 uninstall leaves nothing behind", func(t *testing.T) {
		e.k(t, "delete", "namespace", appNS, "--wait=true", "--timeout=180s")
		if _, err := helm("uninstall", release, "-n", operatorNS, "--wait", "--timeout=3m"); err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "nothing left behind", func() error {
			var left []string
			for _, q := range [][]string{
				{"-n", operatorNS, "get", "all,secrets,configmaps,serviceaccounts,roles,rolebindings,leases", "-o", "name"},
				{"get", "mutatingwebhookconfigurations,validatingwebhookconfigurations,clusterroles,clusterrolebindings", "-o", "name"},
			} {
				out, err := e.kTry(t, q...)
				if err != nil {
					return err
				}
				for _, name := range strings.Fields(out) {
					if strings.Contains(name, "sametag") {
						left = append(left, name)
					}
				}
			}
			if len(left) > 0 {
				return fmt.Errorf("left behind: %v", left)
			}
			return nil
		})
	})
}

// step runs one stage as a subtest and stops the whole test if it failed.
// operatorBin is the host's sametag-operator (the CLI a user runs).
func operatorBin(e env) string {
	if b := os.Getenv("SAMETAG_OPERATOR_BIN"); b != "" {
		return b
	}
	profile := os.Getenv("SAMETAG_NODE_PROFILE")
	if profile == "" {
		profile = "release"
	}
	return filepath.Join(e.repo, "target", profile, "sametag-operator")
}

func step(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

func (e env) podNames(t *testing.T, ns, selector string) []string {
	t.Helper()
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string  `json:"name"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
		} `json:"items"`
	}
	e.jsonGet(t, &list, "-n", ns, "get", "pods", "-l", selector, "--field-selector=status.phase=Running")
	var names []string
	for _, p := range list.Items {
		if p.Metadata.DeletionTimestamp == nil {
			names = append(names, p.Metadata.Name)
		}
	}
	return names
}

// get sends a GET (conditional when inm is set) and checks the status.
func get(t *testing.T, c *http.Client, url, inm string, want int) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if inm != "" {
		req.Header.Set("If-None-Match", inm)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("GET %s (If-None-Match %q): %d, want %d", url, inm, resp.StatusCode, want)
	}
	resp.Body = io.NopCloser(strings.NewReader(string(b)))
	return resp
}

// Names of the one demo Service a client may use (kube-proxy does not look
// at Host; the sidecar must not let the spelling split a resource).
var hostNames = []string{"", "demo.node-sametag.svc.cluster.local", "DEMO.node-sametag:80"}

// writer is who sends a write: credentials and the Host name used.
type writer struct{ user, host string }

type writeResult int

const (
	applied writeResult = iota
	conflict
	retry
)

// increment does one read-modify-write of a counter with If-Match as `who`:
// applied, conflict (another writer won: 412) or retry (lock busy or store
// reconnecting: 503). Errors are transport failures or other statuses.
func increment(c *http.Client, url string, who writer) (writeResult, error) {
	send := func(method string, body io.Reader, ifMatch string) (*http.Response, []byte, error) {
		req, _ := http.NewRequest(method, url, body)
		if who.host != "" {
			req.Host = who.host
		}
		if who.user != "" {
			req.Header.Set("Authorization", who.user)
		}
		if ifMatch != "" {
			req.Header.Set("If-Match", ifMatch)
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, nil, err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, b, nil
	}
	resp, b, err := send(http.MethodGet, nil, "")
	if err != nil {
		return retry, err
	}
	if resp.StatusCode != 200 {
		return retry, fmt.Errorf("GET counter: %d", resp.StatusCode)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return retry, fmt.Errorf("counter body %q", b)
	}
	resp, _, err = send(http.MethodPut, strings.NewReader(strconv.Itoa(n+1)), resp.Header.Get("ETag"))
	if err != nil {
		return retry, err
	}
	switch {
	case resp.StatusCode/100 == 2:
		return applied, nil
	case resp.StatusCode == http.StatusPreconditionFailed:
		return conflict, nil
	case resp.StatusCode == http.StatusServiceUnavailable:
		time.Sleep(100 * time.Millisecond)
		return retry, nil
	}
	return retry, fmt.Errorf("conditional PUT: %d", resp.StatusCode)
}

// counterValue reads the counter through the Service.
func counterValue(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	b, _ := io.ReadAll(get(t, c, url, "", 200).Body)
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("counter body %q", b)
	}
	return n
}

type writersResult struct {
	applied, conflicts, unknown int
	first                       error
}

// writers runs two incrementing writers (different users and Host names)
// until stopped, bounded to 10 minutes. A transport error after the PUT may
// or may not have been applied: counted as unknown.
func writers(c *http.Client, url string) func() writersResult {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	var mu sync.Mutex
	var res writersResult
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			who := writer{user: fmt.Sprintf("Bearer restart-%d", w), host: hostNames[w+1]}
			for ctx.Err() == nil {
				r, err := increment(c, url, who)
				mu.Lock()
				switch {
				case err != nil:
					res.unknown++
					if res.first == nil {
						res.first = err
					}
				case r == applied:
					res.applied++
				case r == conflict:
					res.conflicts++
				}
				mu.Unlock()
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	return func() writersResult {
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return res
	}
}

type trafficResult struct {
	ok, failed int
	first      error
}

// traffic sends GETs (conditional when inm is set) from two goroutines until
// the returned stop function is called, bounded to 10 minutes, and reports
// how many succeeded (200/304) and failed (anything else, or no response).
func traffic(c *http.Client, url, inm string) func() trafficResult {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	var mu sync.Mutex
	var res trafficResult
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				if inm != "" {
					req.Header.Set("If-None-Match", inm)
				}
				resp, err := c.Do(req)
				if ctx.Err() != nil {
					return
				}
				mu.Lock()
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 && resp.StatusCode != 304 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					res.failed++
					if res.first == nil {
						res.first = err
					}
				} else {
					res.ok++
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	return func() trafficResult {
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return res
	}
}
