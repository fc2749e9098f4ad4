package identity

import "context"

type ctxKey int

const (
	principalKey ctxKey = iota
	authErrorKey
	onBehalfOfKey
	relayKey
)

// NewContext returns ctx carrying the caller p.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey, p)
}

// FromContext returns the caller that NewContext stored, if any.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey).(Principal)
	return p, ok && !p.IsZero()
}

// withAuthError records why a request has no principal, so that the
// authorizer can say it in a proper RPC error.
func withAuthError(ctx context.Context, err error) context.Context {
	return context.WithValue(ctx, authErrorKey, err)
}

func authErrorFrom(ctx context.Context) error {
	err, _ := ctx.Value(authErrorKey).(error)
	return err
}

// WithOnBehalfOf returns ctx carrying the client a scheduler acts for.
func WithOnBehalfOf(ctx context.Context, client string) context.Context {
	return context.WithValue(ctx, onBehalfOfKey, client)
}

// OnBehalfOf returns the client the scheduler said it acts for: only set
// when the caller is the scheduler itself (or anonymous).
func OnBehalfOf(ctx context.Context) string {
	s, _ := ctx.Value(onBehalfOfKey).(string)
	return s
}
