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

	step(t, "1 helm install: the operator runs as pods, serves its webhook, patches its caBundle", func(t *testing.T) {
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

	step(t, "3 annotated Deployment: native sidecar injected, Ready through its probes, Service reaches it", func(t *testing.T) {
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

	step(t, "4 seed scenario through the Service: one ETag, 304s, no lost update, Redis loss fails no GET", func(t *testing.T) {
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

		// Concurrent read-modify-write with If-Match: no increment is lost.
		put(t, c, svcURL+"/items/counter", "0")
		const workers, each = 6, 5
		var done atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		deadline := time.Now().Add(2 * time.Minute)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; n < each; {
					if time.Now().After(deadline) {
						errs <- errors.New("increments did not finish in 2m")
						return
					}
					ok, err := increment(c, svcURL+"/items/counter")
					if err != nil {
						errs <- err
						return
					}
					if ok {
						n++
						done.Add(1)
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
	})

	step(t, "5 rolling restarts of the app and the operator fail no request", func(t *testing.T) {
		stop := traffic(c, svcURL+"/items/page", "")
		e.k(t, "-n", appNS, "rollout", "restart", "deployment/demo")
		e.rollout(t, appNS, "deployment", "demo", 4*time.Minute)
		e.k(t, "-n", operatorNS, "rollout", "restart", "deployment/"+release)
		e.rollout(t, operatorNS, "deployment", release, 3*time.Minute)
		time.Sleep(5 * time.Second)
		if res := stop(); res.failed > 0 || res.ok < 20 {
			t.Fatalf("GETs during rolling restarts: %d ok, %d failed (first: %v)", res.ok, res.failed, res.first)
		} else {
			t.Logf("GETs during rolling restarts of the app and the operator: %d ok, 0 failed", res.ok)
		}
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

// increment does one read-modify-write of a counter with If-Match; false
// when another writer won (412), which the caller retries.
func increment(c *http.Client, url string) (bool, error) {
	resp, err := c.Get(url)
	if err != nil {
		return false, err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return false, fmt.Errorf("GET counter: %d", resp.StatusCode)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return false, fmt.Errorf("counter body %q", b)
	}
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(strconv.Itoa(n+1)))
	req.Header.Set("If-Match", resp.Header.Get("ETag"))
	resp, err = c.Do(req)
	if err != nil {
		return false, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case resp.StatusCode/100 == 2:
		return true, nil
	case resp.StatusCode == http.StatusPreconditionFailed:
		return false, nil
	case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusConflict:
		time.Sleep(100 * time.Millisecond) // lock busy or store reconnecting: retry
		return false, nil
	}
	return false, fmt.Errorf("conditional PUT: %d", resp.StatusCode)
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
