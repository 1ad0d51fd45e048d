package redisquota

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// reply is a script call's answer: an integer, an array of up to
// len(ints) integers, or an error (Redis's, or the connection's).
type reply struct {
	err   error
	array bool
	n     int // integers in ints: 1 for an integer
	ints  [4]int64
}

func (r *reply) int64() (int64, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.array {
		return 0, fmt.Errorf("an array of %d integers: %w", r.n, errUnexpected)
	}
	return r.ints[0], nil
}

func (r *reply) int64s(n int) ([]int64, error) {
	if r.err != nil {
		return nil, r.err
	}
	if !r.array || r.n != n {
		return nil, fmt.Errorf("%s, want %d integers: %w", r.describe(), n, errUnexpected)
	}
	return r.ints[:n], nil
}

func (r *reply) describe() string {
	if r.array {
		return fmt.Sprint(r.ints[:r.n])
	}
	return strconv.FormatInt(r.ints[0], 10)
}

// fromCmd reads a go-redis command's answer (a Redis Cluster's pipelines).
func fromCmd(c *redis.Cmd) reply {
	if err := c.Err(); err != nil {
		return reply{err: err}
	}
	switch v := c.Val().(type) {
	case int64:
		return reply{n: 1, ints: [4]int64{v}}
	case []any:
		r := reply{array: true, n: len(v)}
		if len(v) > len(r.ints) {
			return reply{err: fmt.Errorf("an array of %d values: %w", len(v), errUnexpected)}
		}
		for i, e := range v {
			n, ok := e.(int64)
			if !ok {
				return reply{err: fmt.Errorf("an array holding %v: %w", e, errUnexpected)}
			}
			r.ints[i] = n
		}
		return r
	default:
		return reply{err: fmt.Errorf("%v: %w", v, errUnexpected)}
	}
}

// redisError is an error answer of Redis's: the connection stays in step.
type redisError string

func (e redisError) Error() string { return string(e) }

// fill gives every one of replies the error err.
func fill(replies []reply, err error) {
	for i := range replies {
		replies[i] = reply{err: err}
	}
}

// noScript reports whether err is Redis's NOSCRIPT answer: the script is not in
// its cache.
func noScript(err error) bool {
	if err == nil {
		return false
	}
	if re, ok := err.(redisError); ok {
		return strings.HasPrefix(string(re), "NOSCRIPT")
	}
	return errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT")
}

// respDialer makes connections to a single Redis server, set up as go-redis's
// options for it say (network, TLS, credentials, database, client name), for the
// hot path's pipelines (see respConn).
type respDialer struct {
	network, addr      string
	tls                *tls.Config
	username, password string
	db                 int
	clientName         string
	timeout            time.Duration

	mu     sync.Mutex
	conns  map[*respConn]struct{} // open, closed by close
	closed bool
	// failedUntil and lastErr hold back dials after one failed: a Redis that is
	// down or refuses the credentials is tried again after dialBackoff, not by
	// every pipeline (thousands a second), and its decisions fail at once meanwhile.
	failedUntil time.Time
	lastErr     error
}

// dialBackoff is how long after a failed dial (or set-up) the next is held back.
const dialBackoff = 100 * time.Millisecond

func newRespDialer(opt *redis.Options, timeout time.Duration) *respDialer {
	network := opt.Network
	if network == "" {
		network = "tcp"
	}
	return &respDialer{
		network: network, addr: opt.Addr, tls: opt.TLSConfig,
		username: opt.Username, password: opt.Password, db: opt.DB, clientName: opt.ClientName,
		timeout: timeout,
		conns:   map[*respConn]struct{}{},
	}
}

// respConn is a connection to a single Redis server spoken to in RESP2 by hand:
// a pipeline of script calls is one write and one read, with no object per call.
// go-redis's commands, with their boxed arguments and the deadlines it sets
// twice per pipeline, cost a Redis-bound check a measurable share of its CPU
// and of its tail latency (see docs/performance-journal.md, "RESP by hand").
type respConn struct {
	nc  net.Conn
	in  *bufio.Reader
	out []byte // the pipeline being written
}

// dial returns a new connection, set up (see connect) and tracked for close.
// After a failure, dials are held back for dialBackoff, failing at once with
// that failure's error.
func (d *respDialer) dial(ctx context.Context, deadline time.Time) (*respConn, error) {
	now := time.Now()
	d.mu.Lock()
	held, lastErr := now.Before(d.failedUntil), d.lastErr
	d.mu.Unlock()
	if held {
		// Not wrapped: a decision failed by the backoff is not a timeout, even
		// when the connect that started it timed out.
		return nil, fmt.Errorf("not dialing redis again for %v after: %v", dialBackoff, lastErr)
	}
	limit := now.Add(d.timeout)
	c, err := d.connect(ctx, deadline, limit)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		// A connect cut short by its caller (its context ended, or its own
		// deadline, shorter than the dialer's, passed) says nothing of Redis.
		cut := ctx.Err() != nil || (!deadline.IsZero() && deadline.Before(limit) && !time.Now().Before(deadline))
		if !cut {
			d.failedUntil, d.lastErr = time.Now().Add(dialBackoff), err
		}
		return nil, err
	}
	d.failedUntil, d.lastErr = time.Time{}, nil
	if d.closed {
		c.nc.Close()
		return nil, errors.New("redisquota: handler closed")
	}
	d.conns[c] = struct{}{}
	return c, nil
}

// connect dials and sets the connection up (AUTH, SELECT and CLIENT SETNAME,
// when the options ask for them), by deadline (zero for none) or limit, whichever comes
// first.
func (d *respDialer) connect(ctx context.Context, deadline, limit time.Time) (*respConn, error) {
	if deadline.IsZero() || limit.Before(deadline) {
		deadline = limit
	}
	dialer := &net.Dialer{Deadline: deadline}
	var nc net.Conn
	var err error
	if d.tls != nil {
		nc, err = (&tls.Dialer{NetDialer: dialer, Config: d.tls}).DialContext(ctx, d.network, d.addr)
	} else {
		nc, err = dialer.DialContext(ctx, d.network, d.addr)
	}
	if err != nil {
		return nil, fmt.Errorf("dial redis %s: %w", d.addr, err)
	}
	c := &respConn{nc: nc, in: bufio.NewReaderSize(nc, 16<<10)}
	var setup [][]string
	switch {
	case d.password != "" && d.username != "":
		setup = append(setup, []string{"AUTH", d.username, d.password})
	case d.password != "":
		setup = append(setup, []string{"AUTH", d.password})
	}
	if d.db != 0 {
		setup = append(setup, []string{"SELECT", strconv.Itoa(d.db)})
	}
	if d.clientName != "" {
		// As go-redis names its own connections, so that CLIENT LIST shows the
		// hot path's under the URL's client_name too.
		setup = append(setup, []string{"CLIENT", "SETNAME", d.clientName})
	}
	if err := c.setup(deadline, setup); err != nil {
		nc.Close()
		return nil, fmt.Errorf("set up redis connection to %s: %w", d.addr, err)
	}
	return c, nil
}

// setup sends commands that must each be answered +OK.
func (c *respConn) setup(deadline time.Time, cmds [][]string) error {
	if len(cmds) == 0 {
		return nil
	}
	if err := c.nc.SetDeadline(deadline); err != nil {
		return err
	}
	c.out = c.out[:0]
	for _, args := range cmds {
		c.out = appendArrayHeader(c.out, len(args))
		for _, a := range args {
			c.out = appendBulk(c.out, a)
		}
	}
	if _, err := c.nc.Write(c.out); err != nil {
		return err
	}
	for _, args := range cmds {
		line, err := c.line()
		if err != nil {
			return err
		}
		if string(line) != "+OK" {
			if len(line) > 0 && line[0] == '-' {
				return fmt.Errorf("%s: %w", args[0], redisError(line[1:]))
			}
			return fmt.Errorf("%s answered %q", args[0], line)
		}
	}
	return nil
}

// forget closes c and stops tracking it.
func (d *respDialer) forget(c *respConn) {
	c.nc.Close()
	d.mu.Lock()
	delete(d.conns, c)
	d.mu.Unlock()
}

// close closes every connection, and makes later dials fail: pipelines in
// flight fail with their connections.
func (d *respDialer) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for c := range d.conns {
		c.nc.Close()
	}
	clear(d.conns)
}

// exec sends the script calls in one write, by EVALSHA or (eval) EVAL, and reads
// their answers into replies, by deadline. It returns an error when the
// connection is no longer usable (it failed, timed out, or is out of step); the
// calls it did not read an answer for then have that error.
func (c *respConn) exec(deadline time.Time, calls []*op, eval bool, replies []reply) error {
	c.out = c.out[:0]
	for _, o := range calls {
		c.out = o.appendCall(c.out, eval)
	}
	err := c.nc.SetDeadline(deadline)
	if err == nil {
		_, err = c.nc.Write(c.out)
	}
	i := 0
	for err == nil && i < len(calls) {
		if err = c.readReply(&replies[i]); err == nil {
			i++
		}
	}
	fill(replies[i:], err) // not answered, the one that failed included
	if cap(c.out) > maxKeptOut {
		c.out = nil // an outsized pipeline (a batch sent again in full) does not pin its memory
	}
	return err
}

// appendCall appends o's command: EVALSHA with the script's digest, or EVAL with
// its source, then its keys and arguments.
func (o *op) appendCall(b []byte, eval bool) []byte {
	nargs := len(o.cmd) - 3 - len(o.keys)
	b = appendArrayHeader(b, 3+len(o.keys)+nargs)
	if eval {
		b = appendBulk(appendBulk(b, "EVAL"), o.script.source)
	} else {
		b = appendBulk(appendBulk(b, "EVALSHA"), o.script.digest)
	}
	b = appendBulkInt(b, int64(len(o.keys)))
	for _, k := range o.keys {
		b = appendBulk(b, k)
	}
	for _, v := range o.nums[:nargs] {
		b = appendBulkInt(b, v)
	}
	return b
}

func appendArrayHeader(b []byte, n int) []byte {
	b = strconv.AppendInt(append(b, '*'), int64(n), 10)
	return append(b, '\r', '\n')
}

func appendBulk(b []byte, s string) []byte {
	b = strconv.AppendInt(append(b, '$'), int64(len(s)), 10)
	b = append(append(b, '\r', '\n'), s...)
	return append(b, '\r', '\n')
}

func appendBulkInt(b []byte, v int64) []byte {
	var digits [20]byte
	d := strconv.AppendInt(digits[:0], v, 10)
	b = strconv.AppendInt(append(b, '$'), int64(len(d)), 10)
	b = append(append(b, '\r', '\n'), d...)
	return append(b, '\r', '\n')
}

// maxKeptOut bounds the write buffer a connection keeps between pipelines.
const maxKeptOut = 64 << 10

// maxReplyLine bounds what is kept of a reply line (an error's text): the rest
// of a longer one is read and dropped.
const maxReplyLine = 4 << 10

// line reads one RESP line, without its CRLF; it is valid until the next read.
func (c *respConn) line() ([]byte, error) {
	line, err := c.in.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		// Longer than the buffer: keep its start, and read on to its end.
		kept := bytes.Clone(line[:min(len(line), maxReplyLine)])
		for errors.Is(err, bufio.ErrBufferFull) {
			line, err = c.in.ReadSlice('\n')
		}
		if err == nil {
			line = append(kept, "\r\n"...)
		}
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("redis closed the connection: %w", io.ErrUnexpectedEOF)
		}
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("reply %q is not RESP: connection out of step", line)
	}
	return line[:len(line)-2], nil
}

// readElement reads an array's element into e: a script answers flat arrays,
// so an array within one is taken as a connection out of step, rather than read
// by recursion as deep as a server cares to nest.
func (c *respConn) readElement(e *reply) error {
	if b, err := c.in.Peek(1); err == nil && b[0] == '*' {
		return errors.New("an array within an array: connection out of step")
	}
	return c.readReply(e)
}

// readReply reads a script call's answer into r. Redis's error answers and
// answers of an unexpected shape are r's error, the connection staying in step;
// the error returned means it is not.
func (c *respConn) readReply(r *reply) error {
	*r = reply{}
	line, err := c.line()
	if err != nil {
		return err
	}
	switch line[0] {
	case ':':
		v, err := strconv.ParseInt(string(line[1:]), 10, 64)
		if err != nil {
			return fmt.Errorf("integer reply %q: connection out of step", line)
		}
		r.n, r.ints[0] = 1, v
	case '-':
		r.err = redisError(line[1:])
	case '*':
		n, ok := parseLength(line[1:])
		if !ok {
			return fmt.Errorf("array reply %q: connection out of step", line)
		}
		r.array = true
		for i := range max(n, 0) {
			var e reply
			if err := c.readElement(&e); err != nil {
				return err
			}
			switch {
			case r.err != nil:
			case e.err != nil:
				r.err = e.err
			case i >= len(r.ints):
				r.err = fmt.Errorf("an array of %d values: %w", n, errUnexpected)
			default:
				r.ints[i] = e.ints[0]
				r.n++
			}
		}
	case '$':
		n, ok := parseLength(line[1:])
		if !ok {
			return fmt.Errorf("bulk reply %q: connection out of step", line)
		}
		if n >= 0 {
			if _, err := c.in.Discard(n + 2); err != nil {
				return err
			}
		}
		r.err = fmt.Errorf("a string of %d bytes: %w", n, errUnexpected)
	case '+':
		r.err = fmt.Errorf("status %q: %w", line[1:], errUnexpected)
	default:
		return fmt.Errorf("reply %q: connection out of step", line)
	}
	return nil
}

// parseLength reads an array's or a bulk string's length: -1 (nil) or more, and
// less than maxLength, for a length beyond what a script answers means a
// connection out of step.
func parseLength(b []byte) (int, bool) {
	n, err := strconv.Atoi(string(b))
	if err != nil || n < -1 || n > maxLength {
		return 0, false
	}
	return n, true
}

// maxLength bounds the length of an array or string in a reply.
const maxLength = 1 << 20
