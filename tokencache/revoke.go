package tokencache

import (
	"context"
	"errors"
	"fmt"
)

// Revocation says where and how tokens are revoked (RFC 7009).
type Revocation struct {
	URL string
	// Method is POST (default) or GET: Infor's revoke service takes
	// GET ?token=T&token_type_hint=H, credentials in the header.
	Method string
}

// Revoked says what a revocation did.
type Revoked struct {
	RefreshToken bool // a refresh token was revoked and its record deleted
	AccessToken  bool // the current access token was revoked and dropped
}

// Revoke revokes the stored refresh token and the current access token at
// the revocation endpoint, then forgets them: the record is deleted and the
// cache emptied. A refusal is an *Error with the server's code and nothing
// is deleted, unless force is set. With neither token held there is
// nothing to revoke (ErrNothingToRevoke).
func (s *Source) Revoke(ctx context.Context, force bool) (Revoked, error) {
	var done Revoked
	if s.cfg.Revocation.URL == "" {
		return done, fmt.Errorf("oauth2 %q has no revoke_url", s.name)
	}
	s.signMu.Lock()
	defer s.signMu.Unlock()
	rec, err := s.store.Load(ctx, s.key)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return done, fmt.Errorf("oauth2 %q: reading the token store: %w", s.name, err)
	}
	cur := s.cache.cur.Load()
	if rec.RefreshToken == "" && cur == nil {
		return done, ErrNothingToRevoke
	}
	var errs []error
	if rec.RefreshToken != "" {
		if err := s.revoke(ctx, rec.RefreshToken, "refresh_token"); err != nil && !force {
			return done, err
		} else if err != nil {
			errs = append(errs, err)
		}
		if err := s.store.Delete(ctx, s.key, rec.Generation); err != nil {
			return done, fmt.Errorf("oauth2 %q: deleting the revoked refresh token from the store: %w", s.name, err)
		}
		done.RefreshToken = true
		s.mu.Lock()
		s.rec = Record{}
		s.mu.Unlock()
	}
	if cur != nil {
		// A refusal keeps the token, whatever its code (unsupported_token_type
		// included: a JWT the server cannot revoke); -force drops it.
		err := s.revoke(ctx, cur.AccessToken, "access_token")
		switch {
		case err != nil && !force:
			if done.RefreshToken {
				return done, fmt.Errorf("the refresh token was revoked and deleted, but %w", err)
			}
			return done, err
		case err != nil:
			errs = append(errs, err)
		}
		s.cache.clear()
		done.AccessToken = true
	}
	if len(errs) > 0 {
		s.log.Warn("revocation refused; tokens dropped anyway (-force)", "error", errors.Join(errs...).Error())
	} else {
		s.log.Info("tokens revoked", "refresh_token", done.RefreshToken, "access_token", done.AccessToken)
	}
	return done, nil
}

// ErrNothingToRevoke: the entry holds no refresh token and no access token.
var ErrNothingToRevoke = errors.New("nothing to revoke: no refresh token is stored and no access token is held")

func (s *Source) revoke(ctx context.Context, token Secret, hint string) error {
	a, err := s.client.Send(ctx, Request{Method: s.cfg.Revocation.Method, URL: s.cfg.Revocation.URL,
		Form: Form{{"token", token}, {"token_type_hint", Secret(hint)}}})
	if err != nil {
		return err
	}
	if e := s.client.Refusal(a); e != nil {
		return fmt.Errorf("revoking the %s: %w", hint, e)
	}
	return nil
}
