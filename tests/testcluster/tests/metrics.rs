//! The metrics side of the test cluster, exercised through the client sluice itself uses
//! (`prometheus-http-query`): the scripted fake's answers, the real Prometheus scraping the
//! traffic simulator, and the load generator's split.

mod fake_prometheus {
    use std::time::{Duration, Instant};

    use axum::http::StatusCode;
    use prometheus_http_query::{Client, Error};
    use sluice_testcluster::prometheus::fake::{
        Answer, Endpoint, ErrorType, FakePrometheus, QueryMatch, Series,
    };

    const CANARY_ERRORS: &str =
        r#"sum(rate(http_requests_total{code=~"5..",pod=~"web-canary-.*"}[1m]))"#;

    async fn fake_and_client() -> (FakePrometheus, Client) {
        let fake = FakePrometheus::start().await.expect("fake starts");
        let client = Client::try_from(fake.url().as_str()).expect("client for the fake's URL");
        (fake, client)
    }

    fn single_value(data: &prometheus_http_query::response::Data) -> f64 {
        let vector = data.as_vector().expect("a vector");
        assert_eq!(vector.len(), 1, "one series: {vector:?}");
        vector[0].sample().value()
    }

    #[tokio::test]
    async fn an_exact_rule_answers_its_query_by_get_and_by_post() {
        let (fake, client) = fake_and_client().await;
        fake.on(QueryMatch::exact(CANARY_ERRORS), Answer::value(0.125));

        let by_get = client.query(CANARY_ERRORS).get().await.expect("GET answer");
        let by_post = client
            .query(CANARY_ERRORS)
            .post()
            .await
            .expect("POST answer");

        assert_eq!(single_value(by_get.data()), 0.125);
        assert_eq!(single_value(by_post.data()), 0.125);
        let methods: Vec<String> = fake
            .queries()
            .iter()
            .map(|q| q.method.to_string())
            .collect();
        assert_eq!(methods, ["GET", "POST"]);
    }

    #[tokio::test]
    async fn unmatched_queries_get_the_default_which_starts_as_no_data() {
        let (fake, client) = fake_and_client().await;
        fake.on(QueryMatch::exact("up"), Answer::value(1.0));

        let other = client.query("something_else").get().await.expect("answer");
        assert!(other.data().is_empty(), "no data: {:?}", other.data());

        fake.set_default(Answer::value(7.0));
        let other = client.query("something_else").get().await.expect("answer");
        assert_eq!(single_value(other.data()), 7.0);
    }

    #[tokio::test]
    async fn regex_and_predicate_rules_choose_by_query_text_and_the_latest_rule_wins() {
        let (fake, client) = fake_and_client().await;
        fake.on(
            QueryMatch::regex(r#"pod=~"web-canary-"#),
            Answer::value(0.5),
        );
        fake.on(
            QueryMatch::predicate(|query| query.contains("web-stable")),
            Answer::value(0.0),
        );

        let canary = client.query(CANARY_ERRORS).get().await.expect("answer");
        let stable = client
            .query(r#"sum(rate(http_requests_total{pod=~"web-stable-.*"}[1m]))"#)
            .get()
            .await
            .expect("answer");
        assert_eq!(single_value(canary.data()), 0.5);
        assert_eq!(single_value(stable.data()), 0.0);

        // The canary recovers while the test runs: a newer rule shadows the older one.
        fake.on(QueryMatch::regex("web-canary"), Answer::value(0.01));
        let canary = client.query(CANARY_ERRORS).get().await.expect("answer");
        assert_eq!(single_value(canary.data()), 0.01);
    }

    #[tokio::test]
    async fn nan_scalar_and_several_series_reach_the_client_as_prometheus_sends_them() {
        let (fake, client) = fake_and_client().await;
        fake.on(QueryMatch::exact("nan"), Answer::nan());
        fake.on(QueryMatch::exact("scalar"), Answer::scalar(2.5));
        fake.on(
            QueryMatch::exact("per_pod"),
            Answer::series([
                Series::new([("pod", "web-canary-7d9f8b6c5d-x2x4q")], 0.1),
                Series::new([("pod", "web-canary-7d9f8b6c5d-k8z9w")], 0.3),
            ]),
        );

        let nan = client.query("nan").get().await.expect("answer");
        assert!(single_value(nan.data()).is_nan());

        let scalar = client.query("scalar").get().await.expect("answer");
        let scalar = scalar.data().as_scalar().expect("a scalar");
        assert_eq!(scalar.value(), 2.5);

        let per_pod = client.query("per_pod").get().await.expect("answer");
        let per_pod = per_pod.data().as_vector().expect("a vector");
        let mut pods: Vec<&str> = per_pod
            .iter()
            .map(|series| series.metric()["pod"].as_str())
            .collect();
        pods.sort_unstable();
        assert_eq!(
            pods,
            ["web-canary-7d9f8b6c5d-k8z9w", "web-canary-7d9f8b6c5d-x2x4q"]
        );
    }

    #[tokio::test]
    async fn a_range_query_gets_a_matrix_with_one_point_per_step() {
        let (fake, client) = fake_and_client().await;
        fake.on(QueryMatch::Any, Answer::value(0.2));

        let answer = client
            .query_range(CANARY_ERRORS, 1_700_000_000, 1_700_000_060, 15.0)
            .post()
            .await
            .expect("answer");

        let matrix = answer.data().as_matrix().expect("a matrix");
        assert_eq!(matrix.len(), 1);
        let times: Vec<f64> = matrix[0].samples().iter().map(|s| s.timestamp()).collect();
        assert_eq!(
            times,
            [
                1_700_000_000.0,
                1_700_000_015.0,
                1_700_000_030.0,
                1_700_000_045.0,
                1_700_000_060.0
            ]
        );
        assert!(matrix[0].samples().iter().all(|s| s.value() == 0.2));
        assert_eq!(fake.queries()[0].endpoint, Endpoint::Range);
        assert_eq!(fake.queries()[0].params["step"], "15");
    }

    #[tokio::test]
    async fn errors_reach_the_client_as_http_errors_or_prometheus_errors() {
        let (fake, client) = fake_and_client().await;
        fake.on(
            QueryMatch::exact("proxy"),
            Answer::http_error(StatusCode::BAD_GATEWAY, "upstream connect error"),
        );
        fake.on(
            QueryMatch::exact("broken"),
            Answer::prometheus_error(ErrorType::BadData, "parse error at char 3"),
        );
        fake.on(
            QueryMatch::exact("heavy"),
            Answer::prometheus_error(ErrorType::Timeout, "query timed out in query execution"),
        );

        let proxy = client.query("proxy").get().await;
        assert!(matches!(proxy, Err(Error::Client(_))), "{proxy:?}");

        match client.query("broken").get().await {
            Err(Error::Prometheus(error)) => {
                assert!(error.is_bad_data(), "{error:?}");
                assert_eq!(error.message(), "parse error at char 3");
            }
            other => panic!("expected a bad_data error, got {other:?}"),
        }
        match client.query("heavy").post().await {
            Err(Error::Prometheus(error)) => assert!(error.is_timeout(), "{error:?}"),
            other => panic!("expected a timeout error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_slow_answer_arrives_after_its_delay_or_trips_the_client_timeout() {
        let (fake, client) = fake_and_client().await;
        fake.on(
            QueryMatch::Any,
            Answer::slow(Duration::from_millis(300), Answer::value(1.0)),
        );

        let started = Instant::now();
        let answer = client.query("slow").get().await.expect("answer");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(single_value(answer.data()), 1.0);

        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(50))
            .build()
            .expect("client");
        let impatient = Client::from(impatient, &fake.url()).expect("client");
        assert!(impatient.query("slow").get().await.is_err());
    }

    #[tokio::test]
    async fn a_sequence_answers_successive_queries_in_turn() {
        let (fake, client) = fake_and_client().await;
        fake.on(
            QueryMatch::exact("warming_up"),
            Answer::Sequence(vec![Answer::no_data(), Answer::value(3.0)]),
        );
        let first = client.query("warming_up").get().await.expect("answer");
        let second = client.query("warming_up").get().await.expect("answer");
        let third = client.query("warming_up").get().await.expect("answer");
        assert!(first.data().is_empty());
        assert_eq!(single_value(second.data()), 3.0);
        assert_eq!(single_value(third.data()), 3.0);
    }

    #[tokio::test]
    async fn a_fake_that_goes_down_refuses_connections_until_it_comes_up_again() {
        let (mut fake, client) = fake_and_client().await;
        fake.on(QueryMatch::Any, Answer::value(1.0));
        client.query("up").get().await.expect("answer while up");

        fake.go_down().await.expect("goes down");
        let down = client.query("up").get().await;
        assert!(matches!(down, Err(Error::Client(_))), "{down:?}");

        fake.come_up().await.expect("comes up");
        let again = client
            .query("up")
            .get()
            .await
            .expect("answer after coming up");
        assert_eq!(single_value(again.data()), 1.0);
        // The refused query never arrived.
        assert_eq!(fake.query_count(), 2);
    }

    #[tokio::test]
    async fn every_query_is_recorded_so_a_test_can_count_them() {
        let (fake, client) = fake_and_client().await;
        for _ in 0..3 {
            client.query(CANARY_ERRORS).get().await.expect("answer");
        }
        client.query("up").post().await.expect("answer");

        assert_eq!(fake.query_count(), 4);
        assert_eq!(fake.count_matching(&QueryMatch::exact(CANARY_ERRORS)), 3);
        let queries = fake.queries();
        assert!(
            queries
                .windows(2)
                .all(|pair| pair[0].received_at <= pair[1].received_at)
        );
        assert_eq!(queries[3].query, "up");
    }
}
