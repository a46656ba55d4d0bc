-- A deleted account's credit ledger is kept. The ledger is the record of what was paid,
-- refunded and granted; an account's deletion (Supabase Auth's admin deleteUser, or
-- `portraitkit users delete`) takes the user's profile, batches, generations and images,
-- but the ledger rows stay, still naming the (now unknown) user id and nothing else
-- personal, so the credits ever sold and refunded keep adding up.
--
-- The first release deleted them by cascade from the profile. The foreign key goes; the
-- ledger stays append-only, now without the cascade exception.

set local lock_timeout = '10s';

alter table public.credit_ledger drop constraint credit_ledger_user_id_fkey;

comment on column public.credit_ledger.user_id is
  'The profile the entry belongs to; kept after the account is deleted (no foreign key).';

create or replace function private.forbid_ledger_changes() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'credit_ledger is append-only' using errcode = '42501';
end
$$;
