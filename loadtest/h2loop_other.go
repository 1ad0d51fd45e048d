//go:build !linux

package loadtest

import (
	"errors"
	"time"
)

// defaultClient is the load client used unless one is named: the loop client
// needs epoll.
const defaultClient = "h2"

// evLoop needs epoll: elsewhere the loop client is refused.
type evLoop struct{ unstamped int }

func newEvLoop() (*evLoop, error) { return nil, errors.New("the loop client needs Linux (epoll)") }

func (l *evLoop) dial(string, string, time.Duration, func([]byte) error, func(int, time.Time, error), func([]byte, int64)) (*h2Conn, error) {
	return nil, errors.ErrUnsupported
}
func (l *evLoop) pacer() (func(time.Duration), func()) { return precisePause() }
func (l *evLoop) waitIdle() error                      { return errors.ErrUnsupported }
func (l *evLoop) pollIfBehind()                        {}
func (l *evLoop) close()                               {}
