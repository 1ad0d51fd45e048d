package config

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Position is where something was written: a file and a 1-based line.
type Position struct {
	File string `json:"file"`
	Line int    `json:"line"`
}

func (p Position) String() string {
	if p.Line == 0 {
		return p.File
	}
	return fmt.Sprintf("%s:%d", p.File, p.Line)
}

// Error is one config problem at a position.
type Error struct {
	Pos Position
	Msg string
}

func (e *Error) Error() string {
	if e.Pos == (Position{}) {
		return e.Msg // a problem of no file, such as a flag's value
	}
	return e.Pos.String() + ": " + e.Msg
}

// ErrorList is every problem found in a config, sorted by position.
type ErrorList []*Error

func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

func (l ErrorList) sorted() ErrorList {
	sort.SliceStable(l, func(i, j int) bool {
		if l[i].Pos.File != l[j].Pos.File {
			return l[i].Pos.File < l[j].Pos.File
		}
		return l[i].Pos.Line < l[j].Pos.Line
	})
	return l
}

// Errors returns the list inside err, or a single unpositioned Error.
func Errors(err error) ErrorList {
	if err == nil {
		return nil
	}
	var l ErrorList
	if errors.As(err, &l) {
		return l
	}
	var e *Error
	if errors.As(err, &e) {
		return ErrorList{e}
	}
	return ErrorList{{Msg: err.Error()}}
}

// collector gathers errors while a config is read.
type collector struct {
	errs ErrorList
	// halt marks a problem that decoding would trip over again (an alias cycle, a
	// merge key of a scalar): the node is not decoded after it.
	halt bool
}

func (c *collector) add(pos Position, format string, args ...any) {
	c.errs = append(c.errs, &Error{Pos: pos, Msg: fmt.Sprintf(format, args...)})
}

func (c *collector) addErr(pos Position, err error) {
	if err == nil {
		return
	}
	var l ErrorList
	if errors.As(err, &l) {
		c.errs = append(c.errs, l...)
		return
	}
	var e *Error
	if errors.As(err, &e) {
		c.errs = append(c.errs, e)
		return
	}
	c.add(pos, "%s", err.Error())
}

// err returns the errors sorted by position, each reported once: an error found
// through two aliases of one node, or by two stages, is the same mistake.
func (c *collector) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	type seen struct {
		pos Position
		msg string
	}
	dup := make(map[seen]bool, len(c.errs))
	out := c.errs[:0]
	for _, e := range c.errs.sorted() {
		k := seen{e.Pos, e.Msg}
		if !dup[k] {
			dup[k] = true
			out = append(out, e)
		}
	}
	c.errs = out
	return out
}
