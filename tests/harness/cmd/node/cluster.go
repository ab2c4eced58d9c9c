package main

// What the node needs from the apiserver: a client, the "kubernetes" Service
// endpoint and the Node's readiness.

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

func clientFor(kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 50, 100
	return kubernetes.NewForConfig(cfg)
}

// publishAPIServerEndpoint points the "kubernetes" Service (which the control
// plane creates without endpoints: its apiserver listens on loopback only) at
// the host-side forwarder, so in-cluster clients (the operator's pod) reach
// the apiserver through the Service's ClusterIP and kube-proxy. It keeps the
// EndpointSlice in place until ctx ends.
func publishAPIServerEndpoint(ctx context.Context, cs kubernetes.Interface, via string) error {
	host, portStr, err := net.SplitHostPort(via)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return err
	}
	want := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      "kubernetes",
			Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: "kubernetes",
				discoveryv1.LabelManagedBy:   "sametag-node",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{host},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		}},
		Ports: []discoveryv1.EndpointPort{{
			Name: ptr.To("https"), Port: ptr.To(int32(port)), Protocol: ptr.To(corev1.ProtocolTCP),
		}},
	}
	api := cs.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		cur, err := api.Get(ctx, "kubernetes", metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			if _, err := api.Create(ctx, want, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				step("kubernetes EndpointSlice: " + err.Error())
			}
		case err != nil:
			step("kubernetes EndpointSlice: " + err.Error())
		default:
			if len(cur.Endpoints) != 1 || len(cur.Endpoints[0].Addresses) != 1 || cur.Endpoints[0].Addresses[0] != host ||
				len(cur.Ports) != 1 || cur.Ports[0].Port == nil || *cur.Ports[0].Port != int32(port) {
				want.ResourceVersion = cur.ResourceVersion
				if _, err := api.Update(ctx, want, metav1.UpdateOptions{}); err != nil {
					step("kubernetes EndpointSlice: " + err.Error())
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// waitNodeReady polls until the Node reports Ready=True and is schedulable.
func waitNodeReady(ctx context.Context, cs kubernetes.Interface, name string) error {
	var last string
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		ready := false
		last = "no Ready condition yet"
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				last = fmt.Sprintf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
				ready = c.Status == corev1.ConditionTrue
			}
		}
		// The kubelet registers the Node with the not-ready taint; the node
		// lifecycle controller lifts it once Ready. Until then nothing schedules.
		for _, taint := range n.Spec.Taints {
			if ready && taint.Key == corev1.TaintNodeNotReady {
				last = "Ready, waiting for the not-ready taint to be lifted"
				ready = false
			}
		}
		return ready, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last: %s)", err, last)
	}
	return nil
}
