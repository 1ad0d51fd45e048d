package loadtest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// floorScript is the Redis work of the floor: one fixed-window count, the least a
// Redis-backed quota decision asks of Redis (Sluice's own scripts do more).
const floorScript = `local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n`

// FloorKey is the Redis key the floor counts its checks in.
const FloorKey = "{sluice-floor}:checks"

// floorTimeout bounds one round trip of the floor to Redis: a Redis that does not
// answer fails the connection's checks rather than hanging them.
const floorTimeout = 2 * time.Second

// redisFloor is one HTTP/2 connection's connection to Redis, with nothing between
// the two: the calls of everything read together go out in one write, and their
// answers come back in one read, on the connection's own goroutine. No check
// server that hears from Redis before it answers can wake up fewer times.
type redisFloor struct {
	conn net.Conn
	in   *bufio.Reader
	call []byte // one EVALSHA of floorScript, encoded once
	out  bytes.Buffer
}

// dialRedisFloor connects to the Redis at addr (host:port, or unix://PATH) and
// loads floorScript.
func dialRedisFloor(addr string) (*redisFloor, error) {
	network := "tcp"
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, addr = "unix", p
	}
	conn, err := net.DialTimeout(network, addr, floorTimeout)
	if err != nil {
		return nil, fmt.Errorf("dial redis %s: %w", addr, err)
	}
	f := &redisFloor{conn: conn, in: bufio.NewReaderSize(conn, 16<<10)}
	f.out.Write(respCommand("SCRIPT", "LOAD", floorScript))
	sha, err := f.roundTrip(1, func(reply []byte, redisErr bool) error {
		if redisErr || len(reply) != 40 {
			return fmt.Errorf("SCRIPT LOAD answered %q", reply)
		}
		return nil
	})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("load the floor's script: %w", err)
	}
	f.call = respCommand("EVALSHA", string(sha), "1", FloorKey, "1", "1000")
	return f, nil
}

// respCommand encodes a command as RESP's array of bulk strings.
func respCommand(args ...string) []byte {
	b := []byte("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b = append(b, "$"+strconv.Itoa(len(a))+"\r\n"+a+"\r\n"...)
	}
	return b
}

// count sends n calls of the floor's script in one write and reads their n
// answers. failed[i] reports whether Redis answered call i with an error; err
// means the connection is no longer usable.
func (f *redisFloor) count(n int, failed []bool) error {
	for range n {
		f.out.Write(f.call)
	}
	i := 0
	_, err := f.roundTrip(n, func(_ []byte, redisErr bool) error {
		failed[i] = redisErr
		i++
		return nil
	})
	return err
}

// roundTrip writes what f.out holds and reads n replies, passing each to judge:
// an integer's digits, a bulk string's bytes or an error's text, with whether it
// was an error. It returns the last reply.
func (f *redisFloor) roundTrip(n int, judge func(reply []byte, redisErr bool) error) ([]byte, error) {
	defer f.out.Reset()
	if err := f.conn.SetDeadline(time.Now().Add(floorTimeout)); err != nil {
		return nil, err
	}
	if _, err := f.conn.Write(f.out.Bytes()); err != nil {
		return nil, fmt.Errorf("write to redis: %w", err)
	}
	var reply []byte
	for range n {
		redisErr := false
		line, err := f.in.ReadSlice('\n')
		if err != nil {
			return nil, fmt.Errorf("read from redis: %w", err)
		}
		if len(line) < 3 || line[len(line)-2] != '\r' {
			return nil, fmt.Errorf("redis answered %q, not RESP", line)
		}
		body := line[1 : len(line)-2]
		switch line[0] {
		case ':':
			reply = body
		case '-':
			reply, redisErr = body, true
		case '$':
			size, err := strconv.Atoi(string(body))
			if err != nil || size < 0 || size > 1<<10 {
				return nil, fmt.Errorf("redis answered a bulk string of length %q", body)
			}
			reply = make([]byte, size+2)
			if _, err := io.ReadFull(f.in, reply); err != nil {
				return nil, fmt.Errorf("read from redis: %w", err)
			}
			reply = reply[:size]
		default:
			return nil, fmt.Errorf("redis answered %q, not an integer, string or error", line)
		}
		if err := judge(reply, redisErr); err != nil {
			return nil, err
		}
	}
	return reply, nil
}

func (f *redisFloor) Close() error { return f.conn.Close() }
