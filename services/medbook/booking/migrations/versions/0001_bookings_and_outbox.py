"""Bookings, their transactional outbox, and the sweep's run log.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE bookings (
            id                  uuid PRIMARY KEY,
            user_id             text NOT NULL,
            user_name           text NOT NULL,
            gender              text NOT NULL CHECK (gender IN ('Male', 'Female', 'Other')),
            dob                 date NOT NULL,
            services            jsonb NOT NULL,
            base_price          integer NOT NULL CHECK (base_price >= 0),
            final_price         integer CHECK (final_price >= 0),
            status              text NOT NULL
                                CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
            fail_reason         text,
            history             jsonb NOT NULL DEFAULT '[]'::jsonb,
            trace_id            text NOT NULL,
            quota_day           date,
            result_id           uuid,
            idempotency_key     text UNIQUE,
            request_fingerprint text,
            created_at          timestamptz NOT NULL,
            updated_at          timestamptz NOT NULL,
            completed_at        timestamptz
        );
        COMMENT ON COLUMN bookings.quota_day IS
            'Day of the discount quota unit this booking holds (NULL: none)';
        COMMENT ON COLUMN bookings.result_id IS
            'The discount result applied or recorded; a repeat of it changes nothing';
        COMMENT ON COLUMN bookings.completed_at IS 'When the booking first left PENDING';
        CREATE INDEX bookings_pending_by_age ON bookings (created_at) WHERE status = 'PENDING';
        CREATE INDEX bookings_by_creation ON bookings (created_at);

        CREATE TABLE outbox (
            id          bigserial PRIMARY KEY,
            event       text NOT NULL,
            booking_id  uuid NOT NULL,
            payload     text NOT NULL,
            headers     jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at  timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE outbox IS
            'Events committed with their booking, deleted once the broker confirmed them';

        CREATE TABLE sweep_runs (
            id                      bigserial PRIMARY KEY,
            finished_at             timestamptz NOT NULL,
            rejected                integer NOT NULL,
            pending_timeout_seconds integer NOT NULL
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE sweep_runs; DROP TABLE outbox; DROP TABLE bookings;")
