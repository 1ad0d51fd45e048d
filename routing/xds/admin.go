package xds

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Handler serves /api/xds/clients: every connected client with, per resource type,
// the version and nonce last sent, whether it was accepted, and the last NACK's
// error. ?node=SUBSTRING or ?stream=ID selects clients and lists the resources sent
// with their versions; ?detail=1 lists them for all.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		q := r.URL.Query()
		var stream int64
		if v := q.Get("stream"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				http.Error(w, "stream must be a number", http.StatusBadRequest)
				return
			}
			stream = n
		}
		node := q.Get("node")
		detail := q.Get("detail") == "1" || q.Get("detail") == "true" || node != "" || stream != 0
		open, closed := s.clients.views(node, stream, detail)
		out := struct {
			Connected      int          `json:"connected"`
			Clients        []ClientView `json:"clients"`
			RecentlyClosed []ClientView `json:"recentlyClosed"`
		}{Connected: s.clients.count(), Clients: open, RecentlyClosed: closed}
		if out.Clients == nil {
			out.Clients = []ClientView{}
		}
		if out.RecentlyClosed == nil {
			out.RecentlyClosed = []ClientView{}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out) // a failed write means the client went away
	})
}
