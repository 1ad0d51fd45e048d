// Package check answers Envoy's synchronous checks: ext_authz (policy handlers, the
// check cache, quotas) and the rate-limit service (envoyproxy/ratelimit's config).
package check

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/dispatch"
	"github.com/sluicemesh/sluice/mixer/envoy"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/mixer/h2unary"
	"github.com/sluicemesh/sluice/mixer/registry"
	"github.com/sluicemesh/sluice/templates/quota"
)

// DefaultCacheSize is the check cache's bound when Options leave it zero.
const DefaultCacheSize = 10000

// DefaultQuotaHandler is the handler the rate-limit service counts with: memquota in
// the embedded defaults, replaced by a redisquota handler of the same name for
// counts shared across replicas.
const DefaultQuotaHandler = config.RateLimitHandler

// Options configure a Server.
type Options struct {
	Dispatcher *dispatch.Dispatcher
	Registry   *registry.Registry
	Compiler   *expr.Compiler
	Logger     *slog.Logger
	Metrics    prometheus.Registerer
	// Now is the clock of quota decisions; nil means time.Now.
	Now func() time.Time
	// CacheSize bounds the check cache (entries); 0 means 10000, and a negative
	// size turns the cache off (every policy answer is decided anew).
	CacheSize int
	// RateLimitHeaders adds RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset
	// to rate-limit answers.
	RateLimitHeaders bool
	// QuotaHandler is the handler the rate-limit service uses; empty means
	// DefaultQuotaHandler.
	QuotaHandler string
	// MaxDetailedDescriptors bounds the descriptor names that detailed_metric,
	// which names a descriptor by the request's values, adds to
	// sluice_ratelimit_descriptors_total over the life of the server; past it
	// (and for a name longer than 1 KiB) a descriptor is counted as "overflow".
	// 0 means DefaultMaxDetailedDescriptors.
	MaxDetailedDescriptors int
}

// DefaultMaxDetailedDescriptors is the default of Options.MaxDetailedDescriptors.
const DefaultMaxDetailedDescriptors = 10000

// Server implements envoy.service.auth.v3.Authorization and
// envoy.service.ratelimit.v3.RateLimitService.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	rlsv3.UnimplementedRateLimitServiceServer

	opts     Options
	log      *slog.Logger
	compiler *expr.Compiler
	vocab    *attribute.Vocabulary
	dec      *envoy.CheckDecoder
	metrics  *metrics

	planMu sync.Mutex
	plan   atomic.Pointer[plan]
	rlMu   sync.Mutex
	rl     atomic.Pointer[rateLimits]

	scratch sync.Pool // *requestState
}

// requestState is one request's reusable working memory.
type requestState struct {
	fields envoy.CheckFields
	rl     envoy.RateLimitFields
	bag    attribute.Bag
	act    *expr.Activation
	key    []byte
	// Rate-limit checks: the descriptors' rules, the backend's batch and its
	// decisions, and the answer.
	pend      []pending
	batch     []quota.Request
	decisions []quota.Decision
	answer    rlAnswer
	// ext_authz quotas: the instance handed to each quota handler, refilled per
	// charge (QuotaHandler.Quota does not keep it), and its values' bytes.
	quotaInst quota.Instance
	dimValue  []byte
}

// New returns a check server.
func New(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = DefaultCacheSize
	}
	if opts.QuotaHandler == "" {
		opts.QuotaHandler = DefaultQuotaHandler
	}
	if opts.MaxDetailedDescriptors <= 0 {
		opts.MaxDetailedDescriptors = DefaultMaxDetailedDescriptors
	}
	s := &Server{
		opts: opts, log: opts.Logger, compiler: opts.Compiler, vocab: attribute.NewVocabulary(),
		dec: envoy.NewCheckDecoder(opts.Registry),
	}
	var err error
	if s.metrics, err = newMetrics(opts.Metrics, s); err != nil {
		return nil, err
	}
	s.scratch.New = func() any { return &requestState{act: expr.NewActivation(s.vocab)} }
	return s, nil
}

// Register adds the services to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	authz, rls := authv3.Authorization_ServiceDesc, rlsv3.RateLimitService_ServiceDesc
	authz.Methods = s.countUnread("ext_authz", authz.Methods)
	rls.Methods = s.countUnread("ratelimit", rls.Methods)
	g.RegisterService(&authz, s)
	g.RegisterService(&rls, s)
}

// countUnread wraps the generated handlers of a service's methods so that a
// request grpc-go refuses while reading it, before Check or ShouldRateLimit is
// called, is counted as the lean listener counts it: over the message bound
// (RESOURCE_EXHAUSTED) as too_large, any other (bytes that are not the request,
// an upload that broke off) as invalid. The answers are grpc-go's, unchanged; it
// writes them before the error reaches the handler, so the count follows the
// answer by a moment.
func (s *Server) countUnread(service string, methods []grpc.MethodDesc) []grpc.MethodDesc {
	out := slices.Clone(methods)
	for i := range out {
		handler := out[i].Handler
		out[i].Handler = func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			start := time.Now()
			return handler(srv, ctx, func(m any) error {
				err := dec(m)
				if err != nil {
					outcome := "invalid"
					if status.Code(err) == codes.ResourceExhausted {
						outcome = "too_large"
					}
					s.metrics.observe(service, outcome, time.Since(start))
				}
				return err
			}, icpt)
		}
	}
	return out
}

// Methods are the two check methods for the lean HTTP/2 listener (h2unary).
func (s *Server) Methods() []h2unary.Method {
	authz := h2unary.Method{Path: "/" + authv3.Authorization_ServiceDesc.ServiceName + "/Check", Call: s.checkEncoded}
	rls := h2unary.Method{Path: "/" + rlsv3.RateLimitService_ServiceDesc.ServiceName + "/ShouldRateLimit", Call: s.shouldRateLimitEncoded}
	authz.Inline, rls.Inline = s.inProcess, s.inProcess
	// A check that may wait on Redis waits one round trip, tens of microseconds
	// on a healthy Redis: on a reader with nothing else to read it runs there,
	// and h2unary stops that while Redis is slow.
	always := func() bool { return true }
	authz.OnReader, rls.OnReader = always, always
	return []h2unary.Method{authz, rls}
}

// answerEncoded answers one check of service from its encoding, for the lean
// listener: read fills a request state from msg, answer decides, and the answer is
// appended to dst encoded. Bytes that are not a request (named request in the
// error) get INTERNAL, as grpc-go answers them on the gRPC port. msg must not
// change until answerEncoded returns.
func (s *Server) answerEncoded(ctx context.Context, service, request string, msg, dst []byte,
	read func(*requestState, []byte) error,
	answer func(ctx context.Context, st *requestState, dst []byte) ([]byte, string, error),
) ([]byte, error) {
	start := time.Now()
	st := s.scratch.Get().(*requestState)
	defer s.scratch.Put(st)
	var (
		out     []byte
		outcome string
		err     error
	)
	if rerr := read(st, msg); rerr != nil {
		outcome, err = "invalid", status.Errorf(codes.Internal, "decode %s: %v", request, rerr)
	} else {
		out, outcome, err = answer(ctx, st, dst)
	}
	s.metrics.observe(service, outcome, time.Since(start))
	if err != nil {
		return nil, err
	}
	return out, nil
}

// inProcess reports whether the last config's checks never wait on a backend. A new
// config's plan is built by its first check, so one check may run by the old
// answer: inline, it waits on its backend once; in a goroutine, it costs a wake-up.
func (s *Server) inProcess() bool {
	p := s.plan.Load()
	return p != nil && p.inProcess
}

// planFor returns the check plan of the leased runtime, compiling it once per
// generation.
func (s *Server) planFor(l *dispatch.Lease) *plan {
	if p := s.plan.Load(); p != nil && p.gen == l.Generation() {
		return p
	}
	s.planMu.Lock()
	defer s.planMu.Unlock()
	if p := s.plan.Load(); p != nil && p.gen == l.Generation() {
		return p
	}
	p := s.buildPlan(l)
	// A check that leased the previous version just before a reload builds that
	// version's plan for itself: storing it would put the newer one (and its
	// cache) back to be rebuilt by the next check.
	if cur := s.plan.Load(); cur == nil || cur.gen <= p.gen {
		s.plan.Store(p)
	}
	return p
}
