package sysmon

import (
	"slices"
	"testing"
)

func TestEnviron(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    []string
		changed bool
	}{
		{"no GODEBUG", []string{"HOME=/root", "PATH=/bin"}, []string{"HOME=/root", "PATH=/bin", "GODEBUG=" + Setting}, true},
		{"empty GODEBUG", []string{"GODEBUG=", "PATH=/bin"}, []string{"GODEBUG=" + Setting, "PATH=/bin"}, true},
		{"other settings kept", []string{"GODEBUG=http2client=0,netdns=go"}, []string{"GODEBUG=http2client=0,netdns=go," + Setting}, true},
		{"schedtrace set by the operator", []string{"A=1", "GODEBUG=netdns=go,schedtrace=0"}, []string{"A=1", "GODEBUG=netdns=go,schedtrace=0"}, false},
		{"schedtrace with a value of the operator's", []string{"GODEBUG=schedtrace=1000"}, []string{"GODEBUG=schedtrace=1000"}, false},
		{"a name that only ends like it", []string{"GODEBUG=xschedtrace=1"}, []string{"GODEBUG=xschedtrace=1," + Setting}, true},
		{"a second GODEBUG, which the runtime ignores, dropped", []string{"GODEBUG=netdns=go", "B=2", "GODEBUG=schedtrace=0"}, []string{"GODEBUG=netdns=go," + Setting, "B=2"}, true},
		{"GODEBUGX is another variable", []string{"GODEBUGX=1"}, []string{"GODEBUGX=1", "GODEBUG=" + Setting}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.in)
			got, changed := Environ(in)
			if changed != tt.changed || !slices.Equal(got, tt.want) {
				t.Errorf("Environ(%q) = %q, %v; want %q, %v", tt.in, got, changed, tt.want, tt.changed)
			}
			if !slices.Equal(in, tt.in) {
				t.Errorf("Environ changed its argument to %q", in)
			}
			// What it returns is stable: a re-executed process does not re-execute again.
			if again, changed := Environ(got); changed || !slices.Equal(again, got) {
				t.Errorf("Environ of its own result = %q, %v", again, changed)
			}
		})
	}
}

func TestAwake(t *testing.T) {
	tests := []struct {
		godebug string
		awake   bool
	}{
		{"", false},
		{Setting, true},
		{"netdns=go," + Setting, true},
		{"schedtrace=0", false},
		{"schedtrace=1000,schedtrace=0", false},
		{"schedtrace=0,schedtrace=1000", true},
		{"schedtrace=x", false},
	}
	for _, tt := range tests {
		t.Setenv("GODEBUG", tt.godebug)
		if got := Awake(); got != tt.awake {
			t.Errorf("GODEBUG=%q: Awake() = %v, want %v", tt.godebug, got, tt.awake)
		}
	}
}
