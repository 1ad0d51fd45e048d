package xds

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
	"unique"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sluicemesh/sluice/routing/translate"
)

// recentClosed is how many disconnected clients the admin page keeps showing, so
// that the NACK of a client that gave up can still be read.
const recentClosed = 64

// clients tracks every xDS stream: its node, what it asked for, what was sent, and
// whether it was accepted. It implements go-control-plane's server callbacks.
type clients struct {
	log     *slog.Logger
	metrics *metrics
	// onNode is called with the node of each new stream, before its first watch;
	// onClose when the stream ends.
	onNode  func(streamID int64, n translate.Node)
	onClose func(streamID int64, n translate.Node)

	mu     sync.RWMutex
	byID   map[int64]*client
	closed []*client // ring of the last recentClosed
}

// client is one xDS stream.
type client struct {
	mu        sync.Mutex
	id        int64
	delta     bool
	peer      string
	opened    time.Time
	closedAt  time.Time
	node      *core.Node
	info      translate.Node
	types     map[string]*typeState
	unknown   map[string]int // requests for types Sluice does not serve
	announced bool
}

// typeState is one resource type of one stream.
type typeState struct {
	requested  []unique.Handle[string]
	wildcard   bool
	sentNonce  string
	sentAt     time.Time
	sentVer    string
	sent       []unique.Handle[string]          // sotw: the full set of the last response
	deltaVers  map[unique.Handle[string]]string // delta: what the client holds
	pending    bool
	ackedVer   string
	ackedAt    time.Time
	nack       *nackState
	nacks      int
	responses  int
	lastUpdate time.Time
}

type nackState struct {
	Nonce   string    `json:"nonce"`
	Version string    `json:"version,omitempty"`
	Error   string    `json:"error"`
	At      time.Time `json:"at"`
}

func newClients(log *slog.Logger, m *metrics) *clients {
	return &clients{log: log, metrics: m, byID: map[int64]*client{}, onNode: func(int64, translate.Node) {}, onClose: func(int64, translate.Node) {}}
}

func (cs *clients) get(id int64) *client {
	cs.mu.RLock()
	defer cs.mu.RUnlock()
	return cs.byID[id]
}

func (cs *clients) open(ctx context.Context, id int64, delta bool) {
	c := &client{id: id, delta: delta, opened: time.Now(), types: map[string]*typeState{}}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		c.peer = p.Addr.String()
	}
	cs.mu.Lock()
	cs.byID[id] = c
	cs.mu.Unlock()
	cs.metrics.streams.WithLabelValues(protocol(delta)).Inc()
}

func (cs *clients) close(id int64) {
	cs.mu.Lock()
	c := cs.byID[id]
	delete(cs.byID, id)
	if c != nil {
		if len(cs.closed) >= recentClosed {
			copy(cs.closed, cs.closed[1:])
			cs.closed = cs.closed[:recentClosed-1]
		}
		cs.closed = append(cs.closed, c)
	}
	cs.mu.Unlock()
	if c == nil {
		return
	}
	c.mu.Lock()
	c.closedAt = time.Now()
	announced, info, delta := c.announced, c.info, c.delta
	c.mu.Unlock()
	if announced {
		cs.metrics.connected.WithLabelValues(string(info.Generator), protocol(delta)).Dec()
		cs.onClose(id, info)
	}
}

func protocol(delta bool) string {
	if delta {
		return "delta"
	}
	return "sotw"
}

// setNode records the stream's node the first time a request carries one.
func (cs *clients) setNode(c *client, n *core.Node) {
	c.mu.Lock()
	if c.announced || n == nil {
		c.mu.Unlock()
		return
	}
	c.node, c.info, c.announced = n, translate.ParseNode(n), true
	info, delta := c.info, c.delta
	c.mu.Unlock()
	cs.metrics.connected.WithLabelValues(string(info.Generator), protocol(delta)).Inc()
	cs.onNode(c.id, info)
}

func (c *client) typ(url string) *typeState {
	t, ok := c.types[url]
	if !ok {
		t = &typeState{}
		c.types[url] = t
	}
	return t
}

// typeName is the short name of a type URL (LDS, RDS, CDS, EDS), for labels.
func typeName(url string) string {
	switch url {
	case resourcev3.ListenerType:
		return "LDS"
	case resourcev3.RouteType:
		return "RDS"
	case resourcev3.ClusterType:
		return "CDS"
	case resourcev3.EndpointType:
		return "EDS"
	}
	return "other"
}

func intern(names []string) []unique.Handle[string] {
	out := make([]unique.Handle[string], len(names))
	for i, n := range names {
		out[i] = unique.Make(n)
	}
	return out
}

// OnStreamOpen implements sotw.Callbacks.
func (cs *clients) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	cs.open(ctx, id, false)
	return nil
}

// OnStreamClosed implements sotw.Callbacks.
func (cs *clients) OnStreamClosed(id int64, _ *core.Node) { cs.close(id) }

// OnStreamRequest implements sotw.Callbacks. A NACK is recorded, logged and counted,
// and the request is then made to say it holds the rejected version: otherwise the
// caches would answer the NACK by sending the same resources again, and the client
// would reject them again, in a loop. The rejected config is replaced when the config
// changes.
func (cs *clients) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	c, t := cs.request(id, req.GetNode(), req.GetTypeUrl())
	if t == nil {
		return nil
	}
	defer c.mu.Unlock()
	t.requested = intern(req.GetResourceNames())
	t.wildcard = len(req.GetResourceNames()) == 0 || contains(req.GetResourceNames(), "*")
	if cs.settle(c, t, req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), req.GetErrorDetail()) {
		req.VersionInfo = t.sentVer
	}
	return nil
}

// request finds the state of one client's resource type for a request, with the
// client's lock held, or a nil state when the type is not one Sluice serves.
func (cs *clients) request(id int64, node *core.Node, typeURL string) (*client, *typeState) {
	c := cs.get(id)
	if c == nil {
		return nil, nil
	}
	cs.setNode(c, node)
	c.mu.Lock()
	if !cs.served(c, typeURL) {
		c.mu.Unlock()
		return nil, nil
	}
	t := c.typ(typeURL)
	t.lastUpdate = time.Now()
	return c, t
}

// settle records what a request says of the response it answers: an ACK, or a NACK
// (reported true), which is recorded, logged and counted. A first request, a
// resubscription or a stale nonce settles nothing. c.mu is held.
func (cs *clients) settle(c *client, t *typeState, typeURL, nonce, version string, detail *rpcstatus.Status) bool {
	if nonce == "" || nonce != t.sentNonce || !t.pending {
		return false
	}
	t.pending = false
	if detail != nil {
		cs.nack(c, t, typeURL, nonce, t.sentVer, detail.GetMessage())
		return true
	}
	if version == "" {
		version = t.sentVer // delta requests carry no version: they accept what was sent
	}
	t.ackedVer, t.ackedAt = version, time.Now()
	cs.metrics.acks.WithLabelValues(typeName(typeURL)).Inc()
	return false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// nack records a rejection; c.mu is held.
func (cs *clients) nack(c *client, t *typeState, typeURL, nonce, version, msg string) {
	t.nack = &nackState{Nonce: nonce, Version: version, Error: msg, At: time.Now()}
	t.nacks++
	cs.metrics.nacks.WithLabelValues(typeName(typeURL)).Inc()
	cs.log.Warn("xDS client rejected config (NACK); it keeps its previous config until the next change",
		"node", c.info.ID, "stream", c.id, "type", typeName(typeURL), "version", version, "nonce", nonce, "error", msg)
}

// OnStreamResponse implements sotw.Callbacks.
func (cs *clients) OnStreamResponse(_ context.Context, id int64, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	cs.metrics.responses.WithLabelValues(typeName(resp.GetTypeUrl())).Inc()
	c := cs.get(id)
	if c == nil {
		return
	}
	names := make([]unique.Handle[string], 0, len(resp.GetResources()))
	for _, r := range resp.GetResources() {
		names = append(names, unique.Make(resourceName(r.GetValue())))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.typ(req.GetTypeUrl())
	t.sentNonce, t.sentVer, t.sentAt, t.sent, t.pending = resp.GetNonce(), resp.GetVersionInfo(), time.Now(), names, true
	t.responses++
}

// resourceName reads field 1, the name of every xDS resource type Sluice sends,
// from a marshalled resource without decoding the rest.
func resourceName(b []byte) string {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return ""
			}
			return string(v)
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return ""
		}
		b = b[m:]
	}
	return ""
}

// OnDeltaStreamOpen implements delta.Callbacks.
func (cs *clients) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	cs.open(ctx, id, true)
	return nil
}

// OnDeltaStreamClosed implements delta.Callbacks.
func (cs *clients) OnDeltaStreamClosed(id int64, _ *core.Node) { cs.close(id) }

// OnStreamDeltaRequest implements delta.Callbacks. Delta subscriptions track what the
// client holds, so a NACK does not cause a resend by itself.
func (cs *clients) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	c, t := cs.request(id, req.GetNode(), req.GetTypeUrl())
	if t == nil {
		return nil
	}
	defer c.mu.Unlock()
	if len(req.GetResourceNamesSubscribe()) > 0 || len(req.GetResourceNamesUnsubscribe()) > 0 {
		t.requested = applyDeltaSubscription(t.requested, req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe())
	}
	if t.deltaVers == nil && req.GetResponseNonce() == "" {
		t.wildcard = len(req.GetResourceNamesSubscribe()) == 0
	}
	if contains(req.GetResourceNamesSubscribe(), "*") {
		t.wildcard = true
	}
	if contains(req.GetResourceNamesUnsubscribe(), "*") {
		t.wildcard = false
	}
	cs.settle(c, t, req.GetTypeUrl(), req.GetResponseNonce(), "", req.GetErrorDetail())
	return nil
}

func applyDeltaSubscription(have []unique.Handle[string], sub, unsub []string) []unique.Handle[string] {
	set := make(map[unique.Handle[string]]bool, len(have)+len(sub))
	for _, h := range have {
		set[h] = true
	}
	for _, s := range sub {
		set[unique.Make(s)] = true
	}
	for _, s := range unsub {
		delete(set, unique.Make(s))
	}
	out := make([]unique.Handle[string], 0, len(set))
	for h := range set {
		out = append(out, h)
	}
	return out
}

// OnStreamDeltaResponse implements delta.Callbacks.
func (cs *clients) OnStreamDeltaResponse(id int64, req *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	cs.metrics.responses.WithLabelValues(typeName(resp.GetTypeUrl())).Inc()
	c := cs.get(id)
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.typ(req.GetTypeUrl())
	if t.deltaVers == nil {
		t.deltaVers = map[unique.Handle[string]]string{}
	}
	for _, r := range resp.GetResources() {
		t.deltaVers[unique.Make(r.GetName())] = r.GetVersion()
	}
	for _, n := range resp.GetRemovedResources() {
		delete(t.deltaVers, unique.Make(n))
	}
	t.sentNonce, t.sentVer, t.sentAt, t.pending = resp.GetNonce(), resp.GetSystemVersionInfo(), time.Now(), true
	t.responses++
}

// OnFetchRequest implements rest.Callbacks.
func (cs *clients) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error {
	cs.metrics.rejected.WithLabelValues("rest").Inc()
	return fmt.Errorf("REST xDS is not served; use ADS over gRPC")
}

// OnFetchResponse implements rest.Callbacks.
func (cs *clients) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}

// unknownType counts a request for a type Sluice does not serve.
func (cs *clients) unknownType(string, translate.Node) {
	cs.metrics.rejected.WithLabelValues("unknown_type").Inc()
}

// served reports whether Sluice serves a type; requests for others are recorded
// per stream (and logged once per stream and type) instead of being tracked.
func (cs *clients) served(c *client, typeURL string) bool {
	if typeName(typeURL) != "other" {
		return true
	}
	if c.unknown == nil {
		c.unknown = map[string]int{}
	}
	if c.unknown[typeURL] == 0 {
		cs.log.Info("xDS client asked for a resource type Sluice does not serve; it gets no answer for it",
			"node", c.info.ID, "stream", c.id, "type", typeURL)
	}
	c.unknown[typeURL]++
	return false
}

// ClientView is one stream as /api/xds/clients shows it.
type ClientView struct {
	Stream    int64               `json:"stream"`
	Protocol  string              `json:"protocol"`
	Node      string              `json:"node"`
	Generator string              `json:"generator,omitempty"`
	Cluster   string              `json:"cluster,omitempty"`
	Metadata  map[string]any      `json:"metadata,omitempty"`
	Peer      string              `json:"peer,omitempty"`
	Connected time.Time           `json:"connected"`
	Closed    *time.Time          `json:"closed,omitempty"`
	Types     map[string]TypeView `json:"types"`
	Unknown   map[string]int      `json:"unknownTypes,omitempty"`
}

// TypeView is one resource type of a stream.
type TypeView struct {
	TypeURL string `json:"typeUrl"`
	// State is ACK, NACK, or pending (sent, not yet answered).
	State     string     `json:"state,omitempty"`
	Wildcard  bool       `json:"wildcard"`
	Requested int        `json:"requested"`
	Version   string     `json:"version,omitempty"`
	Nonce     string     `json:"nonce,omitempty"`
	SentAt    *time.Time `json:"sentAt,omitempty"`
	Acked     string     `json:"ackedVersion,omitempty"`
	Responses int        `json:"responses"`
	NACKs     int        `json:"nacks"`
	LastNACK  *nackState `json:"lastNack,omitempty"`
	Count     int        `json:"resourceCount"`
	// Resources are the names sent with their versions (the response version in
	// state-of-the-world, each resource's own in delta); only in detail views.
	Resources map[string]string `json:"resources,omitempty"`
}

func (c *client) view(detail bool) ClientView {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := ClientView{
		Stream: c.id, Protocol: protocol(c.delta), Node: c.info.ID, Generator: string(c.info.Generator),
		Cluster: c.node.GetCluster(), Peer: c.peer, Connected: c.opened, Types: map[string]TypeView{},
	}
	if !c.announced {
		v.Generator = ""
	}
	if detail && c.node.GetMetadata() != nil {
		v.Metadata = c.node.GetMetadata().AsMap()
	}
	if !c.closedAt.IsZero() {
		t := c.closedAt
		v.Closed = &t
	}
	for url, t := range c.types {
		tv := TypeView{
			TypeURL: url, Wildcard: t.wildcard, Requested: len(t.requested), Version: t.sentVer, Nonce: t.sentNonce,
			Acked: t.ackedVer, Responses: t.responses, NACKs: t.nacks, LastNACK: t.nack,
		}
		switch {
		case t.responses == 0:
		case t.pending:
			tv.State = "pending"
		case t.nack != nil && t.nack.Nonce == t.sentNonce:
			tv.State = "NACK"
		default:
			tv.State = "ACK"
		}
		if !t.sentAt.IsZero() {
			s := t.sentAt
			tv.SentAt = &s
		}
		if c.delta {
			tv.Count = len(t.deltaVers)
		} else {
			tv.Count = len(t.sent)
		}
		if detail {
			tv.Resources = map[string]string{}
			for _, h := range t.sent {
				tv.Resources[h.Value()] = t.sentVer
			}
			for h, ver := range t.deltaVers {
				tv.Resources[h.Value()] = ver
			}
		}
		v.Types[typeName(url)] = tv
	}
	if len(c.unknown) > 0 {
		v.Unknown = map[string]int{}
		for k, n := range c.unknown {
			v.Unknown[k] = n
		}
	}
	return v
}

// views returns the connected and recently closed streams, filtered by node ID
// substring and stream ID (0: any).
func (cs *clients) views(node string, stream int64, detail bool) (open, closed []ClientView) {
	cs.mu.RLock()
	live := make([]*client, 0, len(cs.byID))
	for _, c := range cs.byID {
		live = append(live, c)
	}
	gone := append([]*client(nil), cs.closed...)
	cs.mu.RUnlock()
	keep := func(c *client) bool {
		if stream != 0 && c.id != stream {
			return false
		}
		if node == "" {
			return true
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return strings.Contains(c.info.ID, node)
	}
	for _, c := range live {
		if keep(c) {
			open = append(open, c.view(detail))
		}
	}
	for i := len(gone) - 1; i >= 0; i-- {
		if keep(gone[i]) {
			closed = append(closed, gone[i].view(detail))
		}
	}
	sort.Slice(open, func(i, j int) bool { return open[i].Stream < open[j].Stream })
	return open, closed
}

// count returns the number of open streams.
func (cs *clients) count() int {
	cs.mu.RLock()
	defer cs.mu.RUnlock()
	return len(cs.byID)
}
