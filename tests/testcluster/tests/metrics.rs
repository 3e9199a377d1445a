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
    async fn a_fake_that_requires_credentials_refuses_queries_without_them() {
        let (fake, client) = fake_and_client().await;
        fake.require_authorization(Some("Bearer s3cret"));
        fake.on(QueryMatch::Any, Answer::value(1.0));

        let refused = client.query("up").get().await;
        assert!(matches!(refused, Err(Error::Client(_))), "{refused:?}");
        let answer = client
            .query("up")
            .header(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_static("Bearer s3cret"),
            )
            .get()
            .await
            .expect("answer with credentials");
        assert_eq!(single_value(answer.data()), 1.0);

        let recorded = fake.queries();
        assert_eq!(recorded.len(), 1, "the refused query is not recorded");
        assert_eq!(recorded[0].authorization.as_deref(), Some("Bearer s3cret"));
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

mod traffic {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use serde_json::{Value, json};
    use sluice_testcluster::traffic::app::{AppConfig, LabelStyle, TestApp};
    use sluice_testcluster::traffic::ingress::{IngressConfig, SimulatedIngress};
    use sluice_testcluster::traffic::load::{self, LoadConfig, SendLoadError};
    use sluice_testcluster::traffic::weights::{
        FixedShare, HttpRouteWeights, NginxCanaryWeights, ReplicaRatioWeights,
        ServiceSelectorWeights, WeightSource,
    };

    async fn apps(canary_error_rate: f64) -> (TestApp, TestApp) {
        let stable = TestApp::start(AppConfig::stable("shop", "web"))
            .await
            .expect("stable app starts");
        let canary = TestApp::start(AppConfig::canary("shop", "web").error_rate(canary_error_rate))
            .await
            .expect("canary app starts");
        (stable, canary)
    }

    #[tokio::test]
    async fn the_load_splits_by_the_share_the_ingress_reads_and_follows_its_changes() {
        let (stable, canary) = apps(0.0).await;
        let share = FixedShare::new(0.2);
        let ingress = SimulatedIngress::start(
            IngressConfig::new("shop", "web"),
            &stable,
            &canary,
            share.clone(),
        )
        .await
        .expect("ingress starts");
        assert_eq!(ingress.refresh().await.expect("share read"), 0.2);

        let report = load::run(ingress.addr(), LoadConfig::new(500.0, 200))
            .await
            .expect("load runs");
        assert_eq!(report.sent, 200);
        assert_eq!(report.failed, 0);
        assert!(
            (report.canary_share() - 0.2).abs() <= 0.02,
            "canary share {}: {report:?}",
            report.canary_share()
        );
        assert_eq!(canary.served(), report.answered_by("canary"));
        assert_eq!(stable.served(), report.answered_by("stable"));

        share.set(0.5);
        assert_eq!(ingress.refresh().await.expect("share read"), 0.5);
        let report = load::run(ingress.addr(), LoadConfig::new(500.0, 100))
            .await
            .expect("load runs");
        assert!(
            (report.canary_share() - 0.5).abs() <= 0.02,
            "canary share {}: {report:?}",
            report.canary_share()
        );
    }

    #[tokio::test]
    async fn ingress_series_carry_the_primary_ingress_and_tell_the_canary_by_its_upstream() {
        let (stable, canary) = apps(1.0).await;
        let ingress = SimulatedIngress::start(
            IngressConfig::new("shop", "web"),
            &stable,
            &canary,
            FixedShare::new(0.5),
        )
        .await
        .expect("ingress starts");
        ingress.refresh().await.expect("share read");
        let report = load::run(
            ingress.addr(),
            LoadConfig::new(500.0, 10).host("web.example.test"),
        )
        .await
        .expect("load runs");
        assert_eq!(report.server_errors(), 5, "{report:?}");

        let text = ingress.metrics_text();
        let canary_line = format!(
            "nginx_ingress_controller_requests{{canary=\"shop-web-canary-80\",controller_class=\"k8s.io/ingress-nginx\",controller_namespace=\"ingress-nginx\",controller_pod=\"{}\",host=\"web.example.test\",ingress=\"web\",method=\"GET\",namespace=\"shop\",path=\"/\",service=\"web\",status=\"500\"}} 5\n",
            ingress.config().controller_pod
        );
        assert!(text.contains(&canary_line), "{text}");
        assert!(
            text.contains("{canary=\"\",") && text.contains("status=\"200\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("nginx_ingress_controller_request_duration_seconds_bucket{canary=\"\","),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_ingress_rule_without_a_host_routes_requests_but_exports_no_series() {
        let (stable, canary) = apps(0.0).await;
        let mut config = IngressConfig::new("shop", "web");
        config.host = None;
        let ingress = SimulatedIngress::start(config, &stable, &canary, FixedShare::new(0.5))
            .await
            .expect("ingress starts");
        ingress.refresh().await.expect("share read");
        let report = load::run(ingress.addr(), LoadConfig::new(500.0, 10))
            .await
            .expect("load runs");
        assert_eq!(report.answered_by("canary"), 5, "{report:?}");
        assert_eq!(canary.served(), 5);
        let text = ingress.metrics_text();
        assert!(
            !text.contains("nginx_ingress_controller_requests{"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_pods_job_label_style_names_pods_as_the_old_scrape_config_did() {
        let mut config = AppConfig::stable("shop", "web");
        config.label_style = LabelStyle::PodsJob;
        let app = TestApp::start(config).await.expect("app starts");
        load::run(app.addr(), LoadConfig::new(500.0, 2))
            .await
            .expect("load runs");
        let text = app.plain_metrics_text();
        assert!(
            text.contains(&format!(
                "http_requests_total{{kubernetes_namespace=\"shop\",kubernetes_pod_name=\"{}\",code=\"200\"}} 2",
                app.pod()
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_app_has_no_error_series_until_its_first_error() {
        let (stable, canary) = apps(0.0).await;
        let ingress = SimulatedIngress::start(
            IngressConfig::new("shop", "web"),
            &stable,
            &canary,
            FixedShare::new(1.0),
        )
        .await
        .expect("ingress starts");
        ingress.refresh().await.expect("share read");
        load::run(ingress.addr(), LoadConfig::new(500.0, 4))
            .await
            .expect("load runs");
        let healthy = canary.plain_metrics_text();
        let pod = canary.pod();
        assert!(
            healthy.contains(&format!(
                "http_requests_total{{namespace=\"shop\",pod=\"{pod}\",service=\"web-canary\",code=\"200\"}} 4"
            )),
            "{healthy}"
        );
        assert!(!healthy.contains("code=\"500\""), "{healthy}");
        let bucket = |le: &str| {
            format!(
                "http_request_duration_seconds_bucket{{le=\"{le}\",namespace=\"shop\",pod=\"{pod}\",service=\"web-canary\"}} 4\n"
            )
        };
        // Bounds spelled as client_golang spells them.
        for le in ["0.005", "1", "10", "+Inf"] {
            assert!(healthy.contains(&bucket(le)), "{le}: {healthy}");
        }

        canary.set_error_rate(1.0);
        load::run(ingress.addr(), LoadConfig::new(500.0, 1))
            .await
            .expect("load runs");
        assert!(canary.plain_metrics_text().contains("code=\"500\"} 1"));
        assert_eq!(canary.errors(), 1);
    }

    #[tokio::test]
    async fn the_load_stops_at_its_duration_bound_and_never_leaves_loopback() {
        let (stable, _canary) = apps(0.0).await;
        let started = Instant::now();
        let report = load::run(
            stable.addr(),
            LoadConfig::new(20.0, 1_000_000).max_duration(Duration::from_millis(500)),
        )
        .await
        .expect("load runs");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!((5..=12).contains(&report.sent), "{report:?}");
        assert_eq!(report.answered_by("stable"), report.sent);

        let elsewhere = SocketAddr::from(([192, 0, 2, 1], 80));
        assert!(matches!(
            load::run(elsewhere, LoadConfig::new(1.0, 1)).await,
            Err(SendLoadError::NotLoopback(_))
        ));
    }

    /// Just enough of the Kubernetes API to GET objects by path; a missing path is a 404 Status.
    async fn fake_api(objects: Arc<Mutex<BTreeMap<String, Value>>>) -> kube::Client {
        async fn get_object(
            State(objects): State<Arc<Mutex<BTreeMap<String, Value>>>>,
            Path(path): Path<String>,
        ) -> axum::response::Response {
            let found = objects.lock().expect("lock").get(&path).cloned();
            match found {
                Some(object) => axum::Json(object).into_response(),
                None => (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": format!("{path} not found"),
                        "reason": "NotFound", "code": 404,
                    })),
                )
                    .into_response(),
            }
        }
        let router = Router::new()
            .route("/{*path}", get(get_object))
            .with_state(objects);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        let url = format!("http://{addr}").parse().expect("uri");
        kube::Client::try_from(kube::Config::new(url)).expect("client")
    }

    #[tokio::test]
    async fn readers_get_the_share_from_the_router_objects_through_the_api() {
        let objects = Arc::new(Mutex::new(BTreeMap::new()));
        let client = fake_api(Arc::clone(&objects)).await;
        objects.lock().expect("lock").insert(
            "apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/web".to_owned(),
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"rules": [{"backendRefs": [
                    {"name": "web", "port": 80, "weight": 90},
                    {"name": "web-canary", "port": 80, "weight": 10},
                ]}]},
            }),
        );
        let route = HttpRouteWeights {
            client: client.clone(),
            namespace: "shop".to_owned(),
            route: "web".to_owned(),
            service: "web".to_owned(),
        };
        assert_eq!(route.canary_share().await.expect("read"), 0.1);

        let nginx = NginxCanaryWeights {
            client: client.clone(),
            namespace: "shop".to_owned(),
            canary_ingress: "web-canary".to_owned(),
        };
        assert_eq!(nginx.canary_share().await.expect("read"), 0.0);
        objects.lock().expect("lock").insert(
            "apis/networking.k8s.io/v1/namespaces/shop/ingresses/web-canary".to_owned(),
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "web-canary", "namespace": "shop", "annotations": {
                    "nginx.ingress.kubernetes.io/canary": "true",
                    "nginx.ingress.kubernetes.io/canary-weight": "40",
                }},
            }),
        );
        assert_eq!(nginx.canary_share().await.expect("read"), 0.4);

        let replicas = ReplicaRatioWeights {
            client,
            namespace: "shop".to_owned(),
            stable: "web".to_owned(),
            canary: "web-canary".to_owned(),
        };
        assert!(replicas.canary_share().await.is_err(), "no Deployments yet");
    }

    fn weighted_route(stable: u32, canary: u32) -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "parentRefs": [{"name": "public"}],
                "rules": [{"backendRefs": [
                    {"name": "web", "port": 80, "weight": stable},
                    {"name": "web-canary", "port": 80, "weight": canary},
                ]}],
            },
        })
    }

    #[tokio::test]
    async fn the_split_follows_the_httproute_as_the_test_cluster_changes_it() {
        const ROUTE: &str = "apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/web";
        let objects = Arc::new(Mutex::new(BTreeMap::new()));
        let client = fake_api(Arc::clone(&objects)).await;
        objects
            .lock()
            .expect("lock")
            .insert(ROUTE.to_owned(), weighted_route(80, 20));
        let (stable, canary) = apps(0.0).await;
        let weights = HttpRouteWeights {
            client,
            namespace: "shop".to_owned(),
            route: "web".to_owned(),
            service: "web".to_owned(),
        };
        let ingress =
            SimulatedIngress::start(IngressConfig::new("shop", "web"), &stable, &canary, weights)
                .await
                .expect("ingress starts");
        assert_eq!(ingress.refresh().await.expect("share read"), 0.2);
        let report = load::run(ingress.addr(), LoadConfig::new(500.0, 100))
            .await
            .expect("load runs");
        assert!((report.canary_share() - 0.2).abs() <= 0.02, "{report:?}");

        objects
            .lock()
            .expect("lock")
            .insert(ROUTE.to_owned(), weighted_route(0, 1));
        assert_eq!(ingress.refresh().await.expect("share read"), 1.0);
        let report = load::run(ingress.addr(), LoadConfig::new(500.0, 50))
            .await
            .expect("load runs");
        assert_eq!(report.answered_by("canary"), 50, "{report:?}");

        // A route the reader cannot use keeps the last share rather than stopping traffic.
        objects.lock().expect("lock").remove(ROUTE);
        assert!(ingress.refresh().await.is_err());
        assert_eq!(ingress.canary_share(), Some(1.0));
    }

    #[tokio::test]
    async fn a_blue_green_reader_follows_the_service_selector() {
        const SERVICE: &str = "api/v1/namespaces/shop/services/web";
        let objects = Arc::new(Mutex::new(BTreeMap::new()));
        let client = fake_api(Arc::clone(&objects)).await;
        let service = |hash: &str| {
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"selector": {"app": "web", "pod-template-hash": hash}},
            })
        };
        let labels = |hash: &str| {
            BTreeMap::from([
                ("app".to_owned(), "web".to_owned()),
                ("pod-template-hash".to_owned(), hash.to_owned()),
            ])
        };
        let reader = ServiceSelectorWeights {
            client,
            namespace: "shop".to_owned(),
            service: "web".to_owned(),
            stable_pod_labels: labels("5d8f7c9b6"),
            canary_pod_labels: labels("7b4d9f8c5"),
        };
        objects
            .lock()
            .expect("lock")
            .insert(SERVICE.to_owned(), service("5d8f7c9b6"));
        assert_eq!(reader.canary_share().await.expect("read"), 0.0);
        objects
            .lock()
            .expect("lock")
            .insert(SERVICE.to_owned(), service("7b4d9f8c5"));
        assert_eq!(reader.canary_share().await.expect("read"), 1.0);
    }
}

mod real_prometheus {
    use std::time::{Duration, Instant};

    use prometheus_http_query::Client;
    use sluice_testcluster::prometheus::server::{
        PrometheusServer, ScrapeTarget, StartPrometheusError,
    };
    use sluice_testcluster::traffic::Latency;
    use sluice_testcluster::traffic::app::AppConfig;
    use sluice_testcluster::traffic::ingress::IngressConfig;
    use sluice_testcluster::traffic::load::{self, LoadConfig};
    use sluice_testcluster::traffic::stack::TrafficStack;
    use sluice_testcluster::traffic::weights::FixedShare;

    /// How long each value may take to appear once Prometheus runs.
    const VALUE_TIMEOUT: Duration = Duration::from_secs(20);

    /// The value of a query that returns one series, or `None` for no data.
    async fn value(client: &Client, query: &str) -> Option<f64> {
        let answer = client.query(query).get().await.expect("Prometheus answers");
        let vector = answer.data().as_vector().expect("a vector");
        assert!(vector.len() <= 1, "{query} gave several series: {vector:?}");
        vector.first().map(|series| series.sample().value())
    }

    /// Polls `query` until `ready` holds for its value (no data counts as not ready).
    async fn poll(client: &Client, query: &str, ready: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + VALUE_TIMEOUT;
        loop {
            let last = value(client, query).await;
            if let Some(value) = last.filter(|value| ready(*value)) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{query} not ready within {VALUE_TIMEOUT:?}; last value {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_prometheus_measures_the_error_rate_of_each_workload_from_every_exporter() {
        let stack = TrafficStack::start_with(
            AppConfig::stable("shop", "web"),
            AppConfig::canary("shop", "web")
                .error_rate(0.5)
                .latency(Latency::Fixed(Duration::from_millis(300))),
            IngressConfig::new("shop", "web"),
            FixedShare::new(0.4),
        )
        .await
        .expect("apps and ingress start");
        let (stable, ingress) = (&stack.stable, &stack.ingress);
        ingress.refresh().await.expect("share read");
        let traffic = load::spawn(
            ingress.addr(),
            // Bounded well beyond the test's own length; the test stops it when done.
            LoadConfig::new(100.0, 6_000).max_duration(Duration::from_secs(60)),
        )
        .expect("load starts");

        let targets = stack.scrape_targets();
        let prometheus = match PrometheusServer::start(&targets).await {
            Err(missing @ StartPrometheusError::BinaryMissing { .. })
                if std::env::var_os("SLUICE_REQUIRE_PROMETHEUS").is_none() =>
            {
                eprintln!("skipping the real-Prometheus test: {missing}");
                return;
            }
            started => started.expect("Prometheus starts and scrapes every target"),
        };
        let client = Client::try_from(prometheus.url().as_str()).expect("client");

        // Each target keeps the job the test gave it (asked through the launcher's own helper).
        let up = prometheus
            .wait_for("up == 1", VALUE_TIMEOUT, |series| series.len() == 5)
            .await
            .expect("every target up");
        let mut jobs: Vec<&str> = up
            .iter()
            .map(|(labels, _)| labels["job"].as_str())
            .collect();
        jobs.sort_unstable();
        assert_eq!(
            jobs,
            [
                "apps",
                "apps",
                "envoy-stats",
                "envoy-stats",
                "ingress-nginx"
            ]
        );

        // Enough canary requests in the window that one request more or less is noise.
        let canary_requests =
            r#"sum(increase(http_requests_total{namespace="shop",pod=~"web-canary-.*"}[10s]))"#;
        poll(&client, canary_requests, |count| count >= 100.0).await;

        let error_rate = |pods: &str| {
            format!(
                r#"sum(rate(http_requests_total{{namespace="shop",pod=~"{pods}",code=~"5.."}}[10s])) / sum(rate(http_requests_total{{namespace="shop",pod=~"{pods}"}}[10s]))"#
            )
        };
        let canary_rate = poll(&client, &error_rate("web-canary-.*"), |_| true).await;
        assert!((canary_rate - 0.5).abs() <= 0.1, "canary: {canary_rate}");

        // The trap of METRICS.md: a healthy workload has no 5xx series, so the plain ratio is
        // no data, and only `or vector(0)` turns it into 0.
        let stable_pods = stable.pod();
        assert_eq!(value(&client, &error_rate(stable_pods)).await, None);
        let guarded = format!(
            r#"(sum(rate(http_requests_total{{namespace="shop",pod=~"{stable_pods}",code=~"5.."}}[10s])) or vector(0)) / sum(rate(http_requests_total{{namespace="shop",pod=~"{stable_pods}"}}[10s]))"#
        );
        assert_eq!(poll(&client, &guarded, |_| true).await, 0.0);

        let nginx_canary = r#"sum(rate(nginx_ingress_controller_requests{namespace="shop",ingress="web",canary!="",status=~"5.."}[10s])) / sum(rate(nginx_ingress_controller_requests{namespace="shop",ingress="web",canary!=""}[10s]))"#;
        let nginx_rate = poll(&client, nginx_canary, |_| true).await;
        assert!(
            (nginx_rate - 0.5).abs() <= 0.1,
            "nginx canary: {nginx_rate}"
        );

        let istio_canary = r#"sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="shop",destination_workload="web-canary",response_code=~"5.."}[10s])) / sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="shop",destination_workload="web-canary"}[10s]))"#;
        let istio_rate = poll(&client, istio_canary, |_| true).await;
        assert!(
            (istio_rate - 0.5).abs() <= 0.1,
            "istio canary: {istio_rate}"
        );

        // Envoy's bucket spelling survives the scrape.
        let envoy_bound = r#"count(istio_request_duration_milliseconds_bucket{destination_workload="web-canary",response_code="200",le="3600000"})"#;
        assert_eq!(value(&client, envoy_bound).await, Some(1.0));

        // Latency: every canary request takes 300 ms, which lies in the (0.25, 0.5] bucket;
        // stable answers at once.
        let p90 = |selector: &str| {
            format!(
                r#"histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket{{{selector}}}[10s])))"#
            )
        };
        let canary_p90 = poll(&client, &p90(r#"pod=~"web-canary-.*""#), |_| true).await;
        assert!(
            canary_p90 > 0.25 && canary_p90 <= 0.5,
            "canary p90 {canary_p90}"
        );
        let stable_p90 = poll(&client, &p90(&format!(r#"pod="{}""#, stable.pod())), |_| {
            true
        })
        .await;
        assert!(stable_p90 <= 0.1, "stable p90 {stable_p90}");
        let istio_p90 = r#"histogram_quantile(0.9, sum by (le) (rate(istio_request_duration_milliseconds_bucket{reporter="destination",destination_workload="web-canary"}[10s])))"#;
        let istio_p90 = poll(&client, istio_p90, |_| true).await;
        assert!(
            istio_p90 > 250.0 && istio_p90 <= 500.0,
            "istio p90 {istio_p90}"
        );
        let nginx_p90 = r#"histogram_quantile(0.9, sum by (le) (rate(nginx_ingress_controller_request_duration_seconds_bucket{ingress="web",canary!=""}[10s])))"#;
        let nginx_p90 = poll(&client, nginx_p90, |_| true).await;
        assert!(
            nginx_p90 > 0.25 && nginx_p90 <= 0.5,
            "nginx p90 {nginx_p90}"
        );

        // The ingress split 40 % to the canary; Prometheus sees the same split.
        let canary_share = r#"sum(increase(nginx_ingress_controller_requests{canary!=""}[10s])) / sum(increase(nginx_ingress_controller_requests[10s]))"#;
        let share = poll(&client, canary_share, |_| true).await;
        assert!((share - 0.4).abs() <= 0.1, "canary share: {share}");

        traffic.stop();
        let report = traffic.finish().await.expect("load report");
        assert_eq!(report.failed, 0, "{report:?}");
        prometheus.stop().await;
    }

    #[tokio::test]
    async fn a_missing_binary_or_a_remote_target_is_a_clear_error() {
        let missing = PrometheusServer::start_binary(
            std::path::Path::new("/nonexistent/prometheus"),
            &[],
            Duration::from_secs(1),
        )
        .await;
        let Err(error) = missing else {
            panic!("started without a binary")
        };
        assert!(matches!(error, StartPrometheusError::BinaryMissing { .. }));
        assert!(
            error
                .to_string()
                .contains("install the Debian package `prometheus`")
        );

        let remote = ScrapeTarget::new("apps", std::net::SocketAddr::from(([192, 0, 2, 1], 80)));
        assert!(matches!(
            PrometheusServer::start(&[remote]).await,
            Err(StartPrometheusError::TargetNotLoopback { .. })
        ));
    }

    #[tokio::test]
    async fn dropping_the_server_kills_the_process() {
        let prometheus = match PrometheusServer::start(&[]).await {
            Err(missing @ StartPrometheusError::BinaryMissing { .. })
                if std::env::var_os("SLUICE_REQUIRE_PROMETHEUS").is_none() =>
            {
                eprintln!("skipping: {missing}");
                return;
            }
            started => started.expect("Prometheus starts"),
        };
        let pid = prometheus.pid().expect("running");
        let addr = prometheus.addr();
        drop(prometheus);
        let deadline = Instant::now() + Duration::from_secs(10);
        // The process is gone once its port refuses connections and its /proc entry (after the
        // runtime reaps it) no longer shows a running prometheus.
        while tokio::net::TcpStream::connect(addr).await.is_ok()
            || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.contains("prometheus"))
        {
            assert!(Instant::now() < deadline, "prometheus {pid} still runs");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
