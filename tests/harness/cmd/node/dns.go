package main

// Cluster DNS for the test node: A records for Services (ClusterIP, or the
// ready endpoints of a headless Service) and for endpoints with a hostname
// (StatefulSet pods), under cluster.local, from informers on the apiserver.
// Every other name is NXDOMAIN: pods on this node have no upstream resolver
// because they must not reach anything outside the node.

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"

	"golang.org/x/net/dns/dnsmessage"
)

const clusterDomain = "cluster.local."

type resolver struct {
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister
}

func serveDNS(ctx context.Context, cs kubernetes.Interface, listen string) error {
	f := informers.NewSharedInformerFactory(cs, 10*time.Minute)
	r := &resolver{
		services: f.Core().V1().Services().Lister(),
		slices:   f.Discovery().V1().EndpointSlices().Lister(),
	}
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())

	pc, err := net.ListenPacket("udp", listen)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		pc.Close()
		return err
	}
	go func() {
		<-ctx.Done()
		pc.Close()
		ln.Close()
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.serveTCP(c)
		}
	}()
	buf := make([]byte, 1500)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if resp := r.answer(buf[:n]); resp != nil {
			_, _ = pc.WriteTo(resp, addr)
		}
	}
}

func (r *resolver) serveTCP(c net.Conn) {
	defer c.Close()
	for {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		resp := r.answer(msg)
		if resp == nil {
			return
		}
		out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
		if _, err := c.Write(append(out, resp...)); err != nil {
			return
		}
	}
}

// answer builds the response to one query message (nil: drop it).
func (r *resolver) answer(query []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	ips, known := r.lookup(strings.ToLower(q.Name.String()))
	if !known {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if b.StartQuestions() != nil || b.Question(q) != nil || b.StartAnswers() != nil {
		return nil
	}
	if q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET {
		for _, ip := range ips {
			hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
			if b.AResource(hdr, dnsmessage.AResource{A: ip.As4()}) != nil {
				return nil
			}
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// lookup resolves a cluster name; known is false for NXDOMAIN.
func (r *resolver) lookup(name string) (ips []netip.Addr, known bool) {
	if !strings.HasSuffix(name, ".svc."+clusterDomain) {
		return nil, false
	}
	labels3 := strings.Split(strings.TrimSuffix(name, ".svc."+clusterDomain), ".")
	switch len(labels3) {
	case 2: // service.namespace
		svc, err := r.services.Services(labels3[1]).Get(labels3[0])
		if err != nil {
			return nil, false
		}
		if svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
			ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
			if err != nil || !ip.Is4() {
				return nil, true
			}
			return []netip.Addr{ip}, true
		}
		return r.endpoints(labels3[1], labels3[0], ""), true
	case 3: // hostname.service.namespace
		ips := r.endpoints(labels3[2], labels3[1], labels3[0])
		return ips, len(ips) > 0
	}
	return nil, false
}

// endpoints returns the ready IPv4 addresses of a Service's EndpointSlices,
// only those with the given hostname if one is set.
func (r *resolver) endpoints(ns, svc, hostname string) []netip.Addr {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc})
	slices, err := r.slices.EndpointSlices(ns).List(sel)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, s := range slices {
		if s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			if hostname != "" && (e.Hostname == nil || *e.Hostname != hostname) {
				continue
			}
			for _, a := range e.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() {
					out = append(out, ip)
				}
			}
		}
	}
	return out
}
