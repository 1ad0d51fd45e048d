// Package redisquota is the redisquota adapter: quotas and rate limits counted in Redis
// (or Redis Cluster), one Lua script per decision, so that every Sluice replica shares one exact count.
package redisquota

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/templates"
	"github.com/sluicemesh/sluice/templates/metric"
	"github.com/sluicemesh/sluice/templates/quota"
)

// Name is the adapter's name in a Handler's spec.adapter.
const Name = "redisquota"

// Defaults.
const (
	DefaultTimeout        = 50 * time.Millisecond
	DefaultLocalCacheSize = 10000
)

// keySlack is how much longer a Redis key lives than the state in it, so that a
// replica whose clock lags Redis's by up to that much still finds its keys.
const keySlack = time.Second

// maxExpiryJitter bounds how much longer than keySlack a fixed window's counter
// lives. Every counter of a window would otherwise expire at the same instant,
// and Redis's periodic cycle deletes expired keys until few are left or its time
// budget (25 ms at the default hz of 10) is spent: at 10k new keys/s that stalled
// Redis for milliseconds each second and doubled the p99 of every check behind
// it. Each key outlives its window by its own share of min(window,
// maxExpiryJitter), which spreads the deletions evenly at the cost of keeping a
// window's keys that much longer: half of it on average. The share comes from a
// hash seeded per process, so replicas choose differently for the same key; the
// first increment's expiry stands (see fixedWindowScript), and any of them is
// past the window's end.
const maxExpiryJitter = 5 * time.Minute

// Params configure a redisquota handler.
//
//	redisServerUrl: redis:6379       # or clusterAddresses: [a:6379, b:6379, c:6379]
//	timeout: 50ms
//	failPolicy: open
//	quotas:
//	- name: requestcount
//	  maxAmount: 100
//	  validDuration: 1s
//	  algorithm: token_bucket
type Params struct {
	// Quotas give the limits of the quota instances sent to the handler.
	Quotas []quotakit.Quota `yaml:"quotas"`
	// RedisServerURL is the Redis server: host:port, or a redis:// or rediss:// URL.
	// A comma-separated list of host:port addresses means a Redis Cluster.
	RedisServerURL string `yaml:"redisServerUrl"`
	// ClusterAddresses are seed nodes of a Redis Cluster, instead of RedisServerURL.
	ClusterAddresses []string `yaml:"clusterAddresses"`
	// Password authenticates to Redis (AUTH); empty for none.
	Password string `yaml:"password" sluice:"secret"`
	// DB is the database of a single server; a cluster has only 0.
	DB int `yaml:"db"`
	// ConnectionPoolSize is the connections per Redis node of a Redis Cluster's
	// client; 0 for go-redis's default (10 per CPU). A single server's decisions
	// go over one connection per pipeline in flight (MaxInFlight), whatever it is.
	ConnectionPoolSize int `yaml:"connectionPoolSize"`
	// Timeout bounds each batch of decisions, from the call until Redis answers,
	// time queued for a pipeline included; when Redis is slower, or down, the
	// requests are decided by FailPolicy. Default 50ms.
	Timeout time.Duration `yaml:"timeout"`
	// FailPolicy is open (allow; the default) or closed (deny) when Redis fails.
	FailPolicy string `yaml:"failPolicy"`
	// LocalCacheSize bounds the denied keys remembered in this replica until they
	// could be allowed again, which keeps hot offenders off Redis; 0 disables it.
	// Default 10000.
	LocalCacheSize int `yaml:"localCacheSize"`
	// MaxInFlight is how many pipelines the handler keeps in flight to Redis at
	// most. Decisions that arrive while all are out wait and share the next one,
	// which under load costs Sluice and Redis one round trip per pipeline instead
	// of one per check; an idle handler sends at once. 0 means the default, 2.
	MaxInFlight int `yaml:"maxInFlight"`
}

// Validate implements adapters.Params.
func (p *Params) Validate() error {
	_, cluster, err := p.addresses()
	if err != nil {
		return err
	}
	if cluster && p.DB != 0 {
		return adapters.Errorf("db", "a Redis Cluster has only db 0")
	}
	if p.DB < 0 {
		return adapters.Errorf("db", "must not be negative")
	}
	if p.ConnectionPoolSize < 0 {
		return adapters.Errorf("connectionPoolSize", "must not be negative")
	}
	if p.Timeout <= 0 {
		return adapters.Errorf("timeout", "must be positive")
	}
	if _, err := quotakit.ParseFailPolicy(p.FailPolicy); err != nil {
		return adapters.Errorf("failPolicy", "%v", err)
	}
	if p.LocalCacheSize < 0 {
		return adapters.Errorf("localCacheSize", "must not be negative")
	}
	if p.MaxInFlight < 0 {
		return adapters.Errorf("maxInFlight", "must not be negative")
	}
	return quotakit.ValidateQuotas(p.Quotas)
}

// addresses returns the servers to connect to: one for a single server (a URL or
// host:port), or the seed nodes of a cluster.
func (p *Params) addresses() (addrs []string, cluster bool, err error) {
	switch {
	case p.RedisServerURL != "" && len(p.ClusterAddresses) > 0:
		return nil, false, adapters.Errorf("clusterAddresses", "give redisServerUrl or clusterAddresses, not both")
	case len(p.ClusterAddresses) > 0:
		for i, a := range p.ClusterAddresses {
			if err := checkHostPort(a); err != nil {
				return nil, false, adapters.Errorf(fmt.Sprintf("clusterAddresses[%d]", i), "%v", err)
			}
		}
		return p.ClusterAddresses, true, nil
	case p.RedisServerURL == "":
		return nil, false, adapters.Errorf("redisServerUrl", "is required (host:port of the Redis server), or clusterAddresses")
	case strings.Contains(p.RedisServerURL, "://"):
		opt, err := redis.ParseURL(p.RedisServerURL)
		if err != nil {
			if strings.Contains(p.RedisServerURL, "@") {
				// Its errors repeat parts of the URL (url.Error the whole of it,
				// go-redis what follows a colon), password included, into logs
				// and /api/config: name the form instead.
				return nil, false, adapters.Errorf("redisServerUrl", "is not a Redis URL (redis://[USER:PASSWORD@]HOST:PORT[/DB], rediss://… or unix://[USER:PASSWORD@]PATH[?db=N]); the value is not shown, for it holds credentials")
			}
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, false, adapters.Errorf("redisServerUrl", "%v", err)
		}
		// ParseURL takes any number for the port (redis://h:99999), which would
		// only fail when dialed, request by request, decided by failPolicy.
		if opt.Network != "unix" {
			if err := checkHostPort(opt.Addr); err != nil {
				return nil, false, adapters.Errorf("redisServerUrl", "%v", err)
			}
		}
		// Redis refuses a name with a space or a control character, and would
		// refuse every connection: at start, and pipeline by pipeline, decided by
		// failPolicy.
		if i := strings.IndexFunc(opt.ClientName, func(r rune) bool { return r <= ' ' || r > '~' }); i >= 0 {
			return nil, false, adapters.Errorf("redisServerUrl", "client_name %q: Redis takes names of printable ASCII characters without spaces", opt.ClientName)
		}
		return []string{p.RedisServerURL}, false, nil
	}
	addrs = strings.Split(p.RedisServerURL, ",")
	for i, a := range addrs {
		addrs[i] = strings.TrimSpace(a)
		if err := checkHostPort(addrs[i]); err != nil {
			return nil, false, adapters.Errorf("redisServerUrl", "%v", err)
		}
	}
	return addrs, len(addrs) > 1, nil
}

func checkHostPort(a string) error {
	bad := func() error {
		if strings.Contains(a, "@") {
			// Credentials, maybe: not repeated into logs and /api/config.
			return errors.New("is not host:port (credentials go in a redis:// URL or in password); the value is not shown")
		}
		return fmt.Errorf("%q is not host:port", a)
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return bad()
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
		return bad()
	}
	return nil
}

// Factory returns the redisquota adapter's factory.
func Factory() *adapters.Factory {
	return &adapters.Factory{
		Name:      Name,
		Doc:       "counts quotas and rate limits in Redis, shared by every replica",
		Templates: []string{templates.Quota},
		NewParams: func() adapters.Params {
			return &Params{Timeout: DefaultTimeout, FailPolicy: string(quotakit.FailOpen), LocalCacheSize: DefaultLocalCacheSize, MaxInFlight: DefaultMaxInFlight}
		},
		Bind: func(b adapters.Binding) (map[string]metric.Aggregation, error) {
			qs := b.Params.(*Params).Quotas
			if _, err := quotakit.NewTable(qs, b.Instances.Quotas); err != nil {
				return nil, err
			}
			return nil, quotakit.CheckOverrideDimensions(qs, b.Instances.QuotaDimensions)
		},
		New: func(ctx context.Context, env adapters.Env, p adapters.Params, inst adapters.Instances) (adapters.Handler, error) {
			return New(ctx, env, p.(*Params), inst.Quotas)
		},
	}
}

// Handler is a redisquota handler. Its Redis keys, per algorithm, with the limit's
// key (its braces and % percent-encoded) in a hash tag, so that Redis Cluster keeps
// all of a limit's keys in one slot:
//
//	sluice:fw:{KEY}:WINDOW:START      fixed window: the count of the window (µs)
//	sluice:sw:{KEY}:log, …:hits        sliding window: the log and its sums
//	sluice:tb2:{KEY}:REQUESTS:WINDOW  token bucket: tokens and time (µs)
//
// Every key expires a second (keySlack) after its state stops mattering; a fixed
// window's counter up to min(window, maxExpiryJitter) later still. A Handler is
// made by New.
type Handler struct {
	env    adapters.Env
	table  *quotakit.Table
	client redis.UniversalClient
	// dialer makes the hot path's connections to a single Redis server; nil
	// with a Redis Cluster, whose pipelines go through client.
	dialer *respDialer
	guard  *quotakit.Guard
	cache  *quotakit.DenyCache
	// One script per algorithm; a Script is safe for concurrent use.
	fixed, sliding, bucket *script
	pipes                  *coalescer
	// seed spreads the expiry of fixed windows' counters (see maxExpiryJitter).
	seed maphash.Seed
	// Allow's jobs, reused.
	jobs sync.Pool
	// pipelineCalls shows how much the coalescer shares round trips.
	pipelineCalls prometheus.Histogram
	// roundTrips shows how long Redis takes to answer, before a slow Redis
	// shows as timeouts decided by the fail policy.
	roundTrips prometheus.Histogram
}

var (
	_ adapters.QuotaHandler = (*Handler)(nil)
	_ prometheus.Collector  = (*Handler)(nil)
)

// reasonScriptMissing counts (Stats.Error) the pipelines sent again with the
// scripts in full because Redis no longer had them.
const reasonScriptMissing = "script_missing"

// New connects a handler for the quota instances bound to it (qualified names).
// Redis need not be up: until it is, requests are decided by the fail policy.
func New(ctx context.Context, env adapters.Env, p *Params, instances []string) (*Handler, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	table, err := quotakit.NewTable(p.Quotas, instances)
	if err != nil {
		return nil, err
	}
	if env.Stats == nil {
		env.Stats = adapters.DiscardStats{}
	}
	policy, _ := quotakit.ParseFailPolicy(p.FailPolicy)
	client, err := newClient(p)
	if err != nil {
		return nil, err
	}
	h := &Handler{
		env: env, table: table, client: client,
		guard: quotakit.NewGuard(env, p.Timeout, policy),
		cache: quotakit.NewDenyCache(p.LocalCacheSize),
		fixed: newScript(fixedWindowScript), sliding: newScript(slidingWindowScript),
		bucket: newScript(tokenBucketScript), seed: maphash.MakeSeed(),
		pipelineCalls: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "sluice_redisquota_pipeline_calls",
			Help:        "Script calls (quota decisions) per pipeline sent to Redis; above 1, concurrent checks shared a round trip.",
			ConstLabels: prometheus.Labels{"handler": env.Name},
			Buckets:     []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}),
		roundTrips: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "sluice_redisquota_roundtrip_seconds",
			Help:        "Time from a pipeline's write to Redis to its last answer or its failure, a dial of its connection included.",
			ConstLabels: prometheus.Labels{"handler": env.Name},
			// 50 µs to 0.8 s: a loopback round trip to the slowest timeout worth having.
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 15),
		}),
	}
	if single, ok := client.(*redis.Client); ok {
		h.dialer = newRespDialer(single.Options(), max(p.Timeout, time.Second))
	}
	h.pipes = newCoalescer(newSlots(p.MaxInFlight), h.sendJobs)
	// Loading the scripts now spares the first batch its NOSCRIPT round trip. A
	// Redis that is down is not an error here: the fail policy covers it.
	lctx, cancel := context.WithTimeout(ctx, max(p.Timeout, time.Second))
	defer cancel()
	for _, s := range []*script{h.fixed, h.sliding, h.bucket} {
		if err := s.Load(lctx, client).Err(); err != nil {
			if env.Logger != nil {
				env.Logger.Warn("redisquota: cannot load scripts; Redis may be down", "error", err)
			}
			break
		}
	}
	return h, nil
}

func newClient(p *Params) (redis.UniversalClient, error) {
	addrs, cluster, err := p.addresses()
	if err != nil {
		return nil, err
	}
	// The timeout of each batch bounds every wait through the context; retries are
	// off because a fixed-window increment is not idempotent: a retried script
	// whose first run did reach Redis would count twice.
	slow := max(p.Timeout, time.Second)
	// RESP2: the scripts answer arrays of integers either way, and with RESP3
	// go-redis peeks at every reply for push notifications this client never
	// subscribes to (~5% of a Redis-bound check's CPU).
	const protocol = 2
	if cluster {
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: addrs, Password: p.Password, PoolSize: p.ConnectionPoolSize,
			Protocol: protocol, ContextTimeoutEnabled: true, MaxRetries: -1, DialerRetries: 1,
			DialTimeout: slow, ReadTimeout: slow, WriteTimeout: slow, PoolTimeout: p.Timeout,
		}), nil
	}
	var opt *redis.Options
	if strings.Contains(addrs[0], "://") {
		if opt, err = redis.ParseURL(addrs[0]); err != nil {
			return nil, fmt.Errorf("redisquota: parse redisServerUrl: %w", err)
		}
	} else {
		opt = &redis.Options{Addr: addrs[0]}
	}
	if p.Password != "" {
		opt.Password = p.Password
	}
	if p.DB != 0 {
		opt.DB = p.DB
	}
	if p.ConnectionPoolSize != 0 {
		opt.PoolSize = p.ConnectionPoolSize
	}
	// A URL's ?protocol=3 is kept for this client (scripts loaded at start); the
	// decisions' own connections speak RESP2 (see respConn).
	if opt.Protocol == 0 {
		opt.Protocol = protocol
	}
	opt.ContextTimeoutEnabled = true
	opt.MaxRetries = -1
	// One dial attempt: backing off between attempts does not fit in a timeout of
	// milliseconds, and go-redis stops dialing a server that keeps refusing.
	opt.DialerRetries = 1
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.PoolTimeout = slow, slow, slow, p.Timeout
	return redis.NewClient(opt), nil
}

// Quota implements adapters.QuotaHandler.
func (h *Handler) Quota(ctx context.Context, now time.Time, inst *quota.Instance, amount uint64) (quota.Decision, error) {
	req, err := h.table.Request(inst, amount)
	if err != nil {
		return quota.Decision{}, fmt.Errorf("redisquota: %w", err)
	}
	var out [1]quota.Decision
	if err := h.Allow(ctx, now, []quota.Request{req}, out[:]); err != nil {
		return quota.Decision{}, err
	}
	return out[0], nil
}

// Describe implements prometheus.Collector.
func (h *Handler) Describe(ch chan<- *prometheus.Desc) {
	h.pipelineCalls.Describe(ch)
	h.roundTrips.Describe(ch)
}

// Collect implements prometheus.Collector.
func (h *Handler) Collect(ch chan<- prometheus.Metric) {
	h.pipelineCalls.Collect(ch)
	h.roundTrips.Collect(ch)
}

// Close implements adapters.Handler.
func (h *Handler) Close(context.Context) error {
	h.pipes.close()
	if h.dialer != nil {
		h.dialer.close()
	}
	if err := h.client.Close(); err != nil {
		return fmt.Errorf("redisquota: close client: %w", err)
	}
	return nil
}
