package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// demoManifest is the demo app: a Deployment of replicas pods that mint
// their own, disagreeing ETags, and a Service targeting the named port.
func demoManifest(ns string, replicas int, podAnnotations string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: demo, namespace: %[1]s}
spec:
  replicas: %[2]d
  selector: {matchLabels: {app: demo}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 0, maxSurge: 1}}
  template:
    metadata:
      labels: {app: demo}
      annotations: {%[3]s}
    spec:
      terminationGracePeriodSeconds: 20
      containers:
      - name: app
        image: sametag.local/demoapp:dev
        imagePullPolicy: Never
        args: ["--listen=0.0.0.0:8080", "--data=/data"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 2
        volumeMounts: [{name: data, mountPath: /data}]
        # Root: the shared hostPath below is created root-owned by the kubelet.
        securityContext: {runAsUser: 0}
      volumes:
      - name: data
        hostPath: {path: %[4]s/demo-data/%[1]s, type: DirectoryOrCreate}
---
apiVersion: v1
kind: Service
metadata: {name: demo, namespace: %[1]s}
spec:
  selector: {app: demo}
  ports: [{name: http, port: 80, targetPort: http}]
`, ns, replicas, podAnnotations, nodeDir())
}

// nodeDir is the node's state directory (node.sh's DIR): the demo app's
// shared data lives there so that node.sh down removes it.
func nodeDir() string {
	if d := os.Getenv("SAMETAG_NODE_DIR"); d != "" {
		return d
	}
	return "/tmp/sametag-node"
}

// TestNodeRunsPods checks the node itself, without sametag: pods start as
// real containers from the local images, a Service's ClusterIP reaches every
// replica through kube-proxy, cluster DNS answers, and pods reach the
// apiserver through the "kubernetes" Service.
func TestNodeRunsPods(t *testing.T) {
	e := loadEnv(t)
	nodes := e.k(t, "get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}")
	if !strings.Contains(nodes, "=True") {
		t.Fatalf("no Ready node: %q", nodes)
	}
	ns := e.namespace(t, "node-basics")
	e.apply(t, demoManifest(ns, 3, ""))
	e.rollout(t, ns, "deployment", "demo", 3*time.Minute)
	ip := e.clusterIP(t, ns, "demo")
	c := client()
	waitRoutable(t, c, "http://"+ip+"/healthz")

	// kube-proxy spreads connections over all three pods.
	if seen := replicasReached(t, c, "http://"+ip+"/whoami", 3); len(seen) != 3 {
		t.Fatalf("the Service reached %d of 3 pods: %v", len(seen), seen)
	}

	// Without sametag the replicas disagree: the problem this project solves.
	put(t, c, "http://"+ip+"/items/plain", "same bytes everywhere")
	tags := map[string]bool{}
	for i := 0; i < 30; i++ {
		resp, err := c.Get("http://" + ip + "/items/plain")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		tags[resp.Header.Get("ETag")] = true
	}
	if len(tags) < 2 {
		t.Fatalf("expected disagreeing ETags from the bare app, got %v", tags)
	}

	// Cluster DNS and the kubernetes Service, seen from inside a pod.
	inPod := func(path string) string {
		t.Helper()
		resp, err := c.Get("http://" + ip + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
		}
		return strings.TrimSpace(string(b))
	}
	if got := inPod("/lookup?name=demo." + ns + ".svc.cluster.local"); got != ip {
		t.Fatalf("cluster DNS: demo.%s.svc.cluster.local = %q, want %s", ns, got, ip)
	}
	if got := inPod("/lookup?name=demo"); got != ip {
		t.Fatalf("cluster DNS search path: demo = %q, want %s", got, ip)
	}
	kip := e.clusterIP(t, "default", "kubernetes")
	if got := inPod("/lookup?name=kubernetes.default"); got != kip {
		t.Fatalf("cluster DNS: kubernetes.default = %q, want %s", got, kip)
	}
	if got := inPod("/dial?addr=" + kip + ":443"); got != "connected" {
		t.Fatalf("pod -> apiserver through the kubernetes Service: %q", got)
	}
}

func put(t *testing.T, c interface {
	Do(*http.Request) (*http.Response, error)
}, url, body string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("PUT %s: %d", url, resp.StatusCode)
	}
}

// waitRoutable waits until kube-proxy has programmed a new Service's rules
// (until then the node answers "network unreachable" for its ClusterIP).
func waitRoutable(t *testing.T, c *http.Client, url string) {
	t.Helper()
	eventually(t, time.Minute, "GET "+url, func() error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}

// replicasReached sends GETs to a /whoami URL until want distinct pods have
// answered, for at most 30 s (kube-proxy picks up a new endpoint within its
// sync period, which can be after the rollout reports the pods Ready).
func replicasReached(t *testing.T, c *http.Client, url string, want int) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(seen) < want && time.Now().Before(deadline) {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(strings.Fields(string(b))) == 0 {
			t.Fatalf("GET %s: %d %q", url, resp.StatusCode, b)
		}
		seen[strings.Fields(string(b))[0]] = true
		time.Sleep(50 * time.Millisecond)
	}
	return seen
}
