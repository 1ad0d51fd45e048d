//go:build !linux

package loadtest

import (
	"errors"
	"time"
)

// evLoop needs epoll: elsewhere the loop client is refused.
type evLoop struct{}

func newEvLoop() (*evLoop, error) { return nil, errors.New("the loop client needs Linux (epoll)") }

func (l *evLoop) dial(string, string, time.Duration, func([]byte) error, func(int, time.Time, error), func([]byte, int64)) (*h2Conn, error) {
	return nil, errors.ErrUnsupported
}
func (l *evLoop) pacer() (func(time.Duration), func()) { return precisePause() }
func (l *evLoop) waitIdle()                            {}
func (l *evLoop) close()                               {}
