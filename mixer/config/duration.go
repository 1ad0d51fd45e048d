package config

import (
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// normalizeDurations rewrites Duration fields written the way Istio users write them
// ("500ms", "1m30s") into the seconds form protojson reads ("0.500s"), in place.
// Values that are not Go durations are left for protojson to report.
func normalizeDurations(node *yaml.Node, md protoreflect.MessageDescriptor) {
	if node == nil || node.Kind != yaml.MappingNode {
		return
	}
	fields := md.Fields()
	for _, kv := range mappingEntries(node) {
		k, v := kv[0], kv[1]
		fd := fields.ByJSONName(k.Value)
		if fd == nil {
			fd = fields.ByName(protoreflect.Name(k.Value))
		}
		if fd == nil || fd.Kind() != protoreflect.MessageKind {
			continue
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				for _, e := range mappingEntries(v) {
					normalizeDurations(e[1], fd.MapValue().Message())
				}
			}
		case fd.Message().FullName() == "google.protobuf.Duration":
			if v.Kind == yaml.ScalarNode && !fd.IsList() {
				v.Value = protoDuration(v.Value)
			}
		case fd.IsList():
			if v.Kind == yaml.SequenceNode {
				for _, el := range v.Content {
					normalizeDurations(el, fd.Message())
				}
			}
		default:
			normalizeDurations(v, fd.Message())
		}
	}
}

func protoDuration(s string) string {
	if strings.HasSuffix(s, "s") {
		if _, err := strconv.ParseFloat(strings.TrimSuffix(s, "s"), 64); err == nil {
			return s // already the protojson form
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return s
	}
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}
