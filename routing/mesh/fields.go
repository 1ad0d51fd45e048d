package mesh

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sluicemesh/sluice/mixer/config"
)

// supportedFields lists, per kind, the spec fields Sluice implements, as JSON paths without
// list indexes ("*" stands for a map key). A set field not listed is rejected by name:
// an operator must never believe a policy is in force when it is not.
func supportedFields() map[string]map[string]bool {
	return map[string]map[string]bool{
		config.KindServiceEntry: set(
			"hosts", "addresses", "ports", "ports.number", "ports.protocol", "ports.name", "ports.targetPort",
			// location only tells Istio whether to use mutual TLS; Sluice configures none
			// either way, so both values mean the same here.
			"location",
			"resolution", "workloadSelector", "workloadSelector.labels",
			"endpoints", "endpoints.address", "endpoints.ports", "endpoints.labels", "endpoints.weight",
			"endpoints.locality", "exportTo",
		),
		config.KindVirtualService: set(
			"hosts", "gateways", "exportTo", "http", "http.name",
			"http.match", "http.match.name", "http.match.ignoreUriCase",
			"http.match.uri", "http.match.uri.exact", "http.match.uri.prefix", "http.match.uri.regex",
			"http.match.method", "http.match.method.exact", "http.match.method.prefix", "http.match.method.regex",
			"http.match.headers", "http.match.headers.*", "http.match.headers.*.exact",
			"http.match.headers.*.prefix", "http.match.headers.*.regex",
			"http.route", "http.route.destination", "http.route.destination.host", "http.route.destination.subset",
			"http.route.destination.port", "http.route.destination.port.number", "http.route.weight",
			"http.timeout",
			"http.retries", "http.retries.attempts", "http.retries.perTryTimeout", "http.retries.retryOn",
			"http.fault", "http.fault.delay", "http.fault.delay.fixedDelay", "http.fault.delay.percentage",
			"http.fault.delay.percentage.value",
			"http.fault.abort", "http.fault.abort.httpStatus", "http.fault.abort.grpcStatus",
			"http.fault.abort.percentage", "http.fault.abort.percentage.value",
			"http.mirror", "http.mirror.host", "http.mirror.subset", "http.mirror.port", "http.mirror.port.number",
			"http.mirrorPercentage", "http.mirrorPercentage.value",
		),
		config.KindDestinationRule: set(append([]string{"host", "exportTo", "subsets", "subsets.name", "subsets.labels"},
			policyFields("trafficPolicy", "subsets.trafficPolicy")...)...),
		// Every WorkloadEntry field feeds the workload registry.
		config.KindWorkloadEntry: set("address", "ports", "labels", "network", "locality", "weight", "serviceAccount"),
	}
}

func policyFields(prefixes ...string) []string {
	var out []string
	for _, p := range prefixes {
		for _, f := range []string{
			"", "loadBalancer", "loadBalancer.simple", "loadBalancer.consistentHash",
			"loadBalancer.consistentHash.httpHeaderName", "loadBalancer.consistentHash.ringHash",
			"loadBalancer.consistentHash.ringHash.minimumRingSize",
			"connectionPool", "connectionPool.tcp", "connectionPool.tcp.maxConnections",
			"connectionPool.tcp.connectTimeout", "connectionPool.http", "connectionPool.http.http1MaxPendingRequests",
			"connectionPool.http.http2MaxRequests", "connectionPool.http.maxRequestsPerConnection",
			"connectionPool.http.maxRetries",
			"outlierDetection", "outlierDetection.consecutive5xxErrors", "outlierDetection.consecutiveGatewayErrors",
			"outlierDetection.interval", "outlierDetection.baseEjectionTime", "outlierDetection.maxEjectionPercent",
			"outlierDetection.minHealthPercent",
		} {
			if f == "" {
				out = append(out, p)
			} else {
				out = append(out, p+"."+f)
			}
		}
	}
	return out
}

// replacements name the supported field that replaces a deprecated one.
func replacements() map[string]string {
	return map[string]string{
		"http.fault.delay.percent":                    "percentage.value",
		"http.mirrorPercent":                          "mirrorPercentage.value",
		"loadBalancer.consistentHash.minimumRingSize": "consistentHash.ringHash.minimumRingSize",
		"outlierDetection.consecutiveErrors":          "consecutive5xxErrors",
	}
}

func set(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// checkFields reports every populated spec field of o that Sluice does not implement.
func (b *builder) checkFields(o *config.Object, msg proto.Message) {
	c := &b.c
	allowed := b.fields[o.Kind]
	walkFields(msg.ProtoReflect(), "", "", func(path, key string) bool {
		if allowed[key] {
			return true
		}
		for old, use := range b.deprecated {
			if strings.HasSuffix(key, old) {
				c.add(o.KeyPos(path), "%s field %q is deprecated and not supported by Sluice: use %s", o.Kind, path, use)
				return false
			}
		}
		c.add(o.KeyPos(path), "%s field %q is not supported by Sluice (remove it; Sluice never ignores a setting silently)", o.Kind, path)
		return false
	})
}

// walkFields calls visit for each populated field with its indexed path
// ("http[0].route[1].weight") and its key ("http.route.weight"); it descends into a
// message field only when visit returns true.
func walkFields(m protoreflect.Message, path, key string, visit func(path, key string) bool) {
	switch m.Descriptor().FullName() {
	case "google.protobuf.Duration", "google.protobuf.UInt32Value", "google.protobuf.BoolValue",
		"google.protobuf.DoubleValue", "google.protobuf.Int32Value":
		return // scalars in disguise
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := fd.JSONName()
		p, k := join(path, name), join(key, name)
		if !visit(p, k) {
			return true
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				return true
			}
			v.Map().Range(func(mk protoreflect.MapKey, mv protoreflect.Value) bool {
				mp, mkey := p+"."+mk.String(), k+".*"
				if visit(mp, mkey) {
					walkFields(mv.Message(), mp, mkey, visit)
				}
				return true
			})
		case fd.IsList():
			if fd.Kind() != protoreflect.MessageKind {
				return true
			}
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walkFields(l.Get(i).Message(), fmt.Sprintf("%s[%d]", p, i), k, visit)
			}
		case fd.Kind() == protoreflect.MessageKind:
			walkFields(v.Message(), p, k, visit)
		}
		return true
	})
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

// collector gathers positioned errors.
type collector struct{ errs config.ErrorList }

func (c *collector) add(pos config.Position, format string, args ...any) {
	c.errs = append(c.errs, &config.Error{Pos: pos, Msg: fmt.Sprintf(format, args...)})
}

func (c *collector) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	return c.errs
}

// quote lists names for messages.
func quote(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}
